"""Delivery: the one place where "who" becomes routing ids and topics.

Handlers say what reaches whom — the reply to this request, this push to an account's
sessions, this event on a room, this presence change — and ``Delivery`` turns it into
actions (zchat.core.actions) for the sessions this broker holds: ROUTER sends to their
routing ids, PUB sends on topics. A room's event goes on its topic when the room is
public and is pushed to every member's sessions when it is private (docs/PROTOCOL.md
§17.2). A broker of a cluster uses a second implementation, ``ClusterDelivery``
(zchat.core.cluster): it publishes room messages from the database after the commit and
hands room events and pushes to the other brokers (docs/cluster.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from zchat import wire as p
from zchat.core.actions import Action, ToPeer, ToTopic
from zchat.core.ports import DirectMessageRow, MessageRow
from zchat.core.state import Account, State


def message_of(row: MessageRow) -> p.MessagePosted:
    """The MESSAGE (event, HISTORY element) of a stored room message: a deleted one's
    text is "" (§6.38); the ``kind`` column's "notice" is kind "text" with ``notice``
    (§6.17)."""
    return p.MessagePosted(room=row.room, seq=row.seq, time=row.time_ms, sender=row.sender,
                           text="" if row.deleted_by else row.text,
                           kind="action" if row.kind == "action" else "text",
                           deleted_by=row.deleted_by, notice=row.kind == "notice")


def dm_of(row: DirectMessageRow) -> p.DirectMessage:
    """The DM push (LOGIN's ``pending``, DM_HISTORY element) of a stored DM (§6.7.1)."""
    return p.DirectMessage(id=row.id, time=row.time_ms, sender=row.sender, to=row.recipient,
                           text=row.text, notice=row.kind == "notice")


class Delivery:
    """Turns deliveries into actions, reading the sessions and memberships of ``state``."""

    #: Whether other brokers share the store's sessions (a cluster, docs/cluster.md): a
    #: RESUME this broker does not know is then looked up in the store.
    shares_sessions = False

    def __init__(self, state: State) -> None:
        self.state = state

    def session_moved(self, token_sha256: str) -> None:
        """A session was resumed here from the store: in a cluster the broker that held
        it (if alive) must drop it; a single broker has nobody to tell."""

    @staticmethod
    def reply(routing_id: bytes, request_id: bytes, reply: p.Reply) -> ToPeer:
        """The OK reply to a request."""
        return ToPeer(routing_id, p.encode_reply(request_id, reply))

    @staticmethod
    def error(routing_id: bytes, request_id: bytes, status: int, reason: str,
              retry_after_ms: int = 0) -> ToPeer:
        """The ERROR reply to a request (request id "?" when it could not be read)."""
        # A reason may quote the peer's input, lone surrogates included (an unknown field
        # named "\ud800"), which UTF-8 cannot carry: they are written as \ud800 escapes.
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        return ToPeer(routing_id, p.encode_reply(request_id or b"?", p.Error(
            status=int(status), reason=reason, retry_after_ms=retry_after_ms)))

    @staticmethod
    def to_session(routing_id: bytes, push: p.Message) -> ToPeer:
        """A push to one session (SESSION_CLOSED to a connection being displaced)."""
        return ToPeer(routing_id, p.encode_push(push))

    def to_accounts(self, account_keys: Iterable[str], push: p.Message,
                    exclude: bytes = b"") -> list[Action]:
        """A push to every session of the accounts (but the session ``exclude``), each
        session once, in routing-id order."""
        accounts = self.state.accounts
        targets: set[bytes] = set()
        for key in account_keys:
            account = accounts.get(key)
            if account is not None:
                targets |= account.sessions
        targets.discard(exclude)
        if not targets:
            return []
        frames = p.encode_push(push)
        return [ToPeer(t, frames) for t in sorted(targets)]

    def to_account(self, account_key: str, push: p.Message,
                   exclude: bytes = b"") -> list[Action]:
        """A push to every session of one account (but ``exclude``)."""
        return self.to_accounts((account_key,), push, exclude)

    def room_event(self, key: str, event: p.Message, also: Iterable[str] = ()) -> list[Action]:
        """An event of room ``key``: published on ``room/<key>/`` for a public room; for
        a private room pushed over the ROUTER to every session of every member (and of
        the accounts in ``also``, e.g. one being removed), never on PUB (§17.2)."""
        if key not in self.state.private:
            return [ToTopic(p.encode_event(p.room_topic(key), event))]
        return self.to_accounts(self.state.members.get(key, set()) | set(also), event)

    def pending_handed(self, routing_id: bytes,
                       pending: Iterable[p.DirectMessage]) -> None:
        """The LOGIN or RESUME reply to ``routing_id`` lists these pending DMs. Nothing
        to do on one broker; a cluster's (zchat.core.cluster) notes them, so that it does
        not push them to that session again."""

    def sessions_held(self, account_key: str) -> int | None:
        """How many sessions of the account the whole cluster holds, this broker's
        included (docs/cluster.md, presence across the cluster), or None on a broker
        alone: its own sessions in memory are then the count."""
        return None

    def lock_presence(self, account_key: str) -> None:
        """Before a session of the account starts or ends: take what orders presence
        decisions across the cluster (nothing on a broker alone). Raises StorageError
        (503) when it cannot be taken now; nothing was changed then."""

    def count_failed(self, reason: str) -> None:
        """The cluster's count of an account's sessions could not be read after this
        wake-up began a session change: a decision made without it could publish a
        wrong presence, so a cluster's wake-up is made to fail whole (503, nothing of it
        sent; zchat.broker.loop ``_recover``). Nothing on a broker alone."""

    @staticmethod
    def presence(account: Account, key: str, now_ms: int, text: str | None = None) -> ToTopic:
        """The account's presence now, on its presence topic (``text`` for a quit
        message, else its away text)."""
        event = p.PresenceChanged(name=account.name, presence=account.presence, time=now_ms,
                                  text=account.away_text if text is None else text)
        return ToTopic(p.encode_event(p.presence_topic(key), event))

    @staticmethod
    def broadcast(topic: bytes, event: p.Message) -> ToTopic:
        """An event for every subscriber of a fixed topic (TICK, GOING_AWAY)."""
        return ToTopic(p.encode_event(topic, event))
