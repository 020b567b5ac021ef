"""zchat's errors: one root, split by who is at fault, each carrying a wire status.

Status codes are 3-digit like HTTP's and Malamute's (docs/PROTOCOL.md §11); every error the
broker answers with maps straight onto an ERROR reply ``(status, reason)``.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Status codes of ERROR replies (docs/PROTOCOL.md §11)."""

    BAD_REQUEST = 400            # malformed frames, body or fields: the peer's fault
    UNAUTHORIZED = 401           # login required, or wrong name/password
    FORBIDDEN = 403              # logged in but not allowed (not a member, not an admin)
    NOT_FOUND = 404              # no such room, account or user
    UNKNOWN_COMMAND = 405        # unknown request type
    CONFLICT = 409               # name already taken
    TOO_LARGE = 413              # body or text over its limit
    INVALID = 422                # well-formed but refused by a rule (name, text)
    VERSION_NOT_SUPPORTED = 426  # protocol version frame not ours
    TOO_MANY_REQUESTS = 429      # rate limited (retry_after_ms says when)
    INTERNAL = 500               # the broker's own bug; logged with a traceback
    UNAVAILABLE = 503            # storage failed (disk full, locked); nothing was changed


class ZchatError(Exception):
    """Root of every error zchat raises on purpose."""

    status: Status = Status.INTERNAL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(ZchatError):
    """The peer broke the protocol or a rule; answered with ERROR(status, reason).

    ``request_id`` is the id of the offending request when it could be read, so that the
    reply can echo it.
    """

    #: With 429: milliseconds until a retry may succeed (the ERROR's ``retry_after_ms``).
    retry_after_ms: int = 0

    def __init__(self, status: Status, reason: str, request_id: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{int(self.status)} {self.reason}"


class RateLimited(ProtocolError):
    """A request over a rate limit or a room's slow mode: ERROR 429 whose
    ``retry_after_ms`` (>= 1) says when to retry (docs/PROTOCOL.md §15). The refused
    request changed nothing."""

    def __init__(self, reason: str, retry_after_ms: int) -> None:
        super().__init__(Status.TOO_MANY_REQUESTS, reason)
        self.retry_after_ms = max(1, retry_after_ms)


class LocalProtocolError(ZchatError):
    """We misused the protocol ourselves (a bug in the caller, not the peer)."""


class StorageError(ZchatError):
    """The store could not commit (disk full, I/O error); nothing was changed."""

    status = Status.UNAVAILABLE


class RequestFailed(ZchatError):
    """Client side: the broker answered a request with ERROR(status, reason)."""

    def __init__(self, status: int, reason: str, retry_after_ms: int = 0) -> None:
        super().__init__(reason)
        self.status = Status(status) if status in Status._value2member_map_ else status  # type: ignore[assignment]
        self.retry_after_ms = retry_after_ms

    def __str__(self) -> str:
        return f"{self.reason} ({int(self.status)})"


class ConnectionFailed(ZchatError):
    """Client side: the broker did not answer within the timeout, or went away."""

    status = Status.UNAVAILABLE
