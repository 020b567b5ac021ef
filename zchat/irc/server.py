"""The gateway's asyncio adapter (docs/irc.md): ``asyncio.start_server`` accepts IRC
clients; each connection gets one ``zchat.client.Client`` and one pure
``IrcConnection`` (zchat/irc/state.py), and this module only reads, calls the core and
carries out its answer: writes lines, makes the zchat calls, closes.

A task per connection reads its lines as they come (so an EOF is seen at once, and the
lines not handled yet are dropped then); they are handled one at a time, each with the
zchat calls it makes, so replies keep the order of the commands (an IRC client pairs
them by order: a PING after a PRIVMSG is answered after the PRIVMSG's echo or error —
except for a message kept while the broker is away, answered when it is sent). zchat
events are read by another task per connection and written as they come; a third sends
the kept messages again once the broker is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zchat.client.client import RATE_LIMIT_TRIES, SEND_RETRY_S, Client, new_cmid
from zchat.client.session import RATE_LIMIT_JITTER, rate_limit_wait_s
from zchat.errors import ConnectionFailed, RequestFailed, Status, ZchatError
from zchat.irc import calls as c
from zchat.irc.codec import IrcParseError, LineBuffer, body_too_long, parse_line, serialize
from zchat.irc.core import connection
from zchat.irc.register import claim_guest, register_account
from zchat.irc.relay import Relays
from zchat.irc.state import Peer, Settings
from zchat.names import name_key
from zchat.ratelimit import BucketTable, address_key

log = logging.getLogger("zchat.irc")

#: Bytes read from a client at a time.
READ_CHUNK = 16 * 1024
#: The share of ``[irc] max_connections`` that connections not yet registered may hold
#: (``Gateway.refusal``): with ``max_connections_per_address`` this keeps the other half
#: for logged-in users however many addresses open sockets and send nothing.
UNREGISTERED_SHARE = 0.5
#: A client that has not registered within this many seconds is closed.
REGISTRATION_TIMEOUT_S = 60.0
#: Silence after which the gateway PINGs a registered client, and after which it gives
#: up when the PING gets no answer either.
IDLE_PING_S = 120.0
IDLE_CLOSE_S = 60.0
#: Bytes waiting to be written to one client before it counts as dead (SendQ exceeded):
#: a client that stops reading must not hold the gateway's memory.
MAX_SENDQ_BYTES = 4 * 1024 * 1024
#: How long LOGOUT may take when a connection ends, and how long SIGTERM waits for all
#: connections to end (the gateway exits within 2 s, docs/irc.md).
LOGOUT_WAIT_S = 1.0
SHUTDOWN_WAIT_S = 1.5
#: Bytes of lines read from one client and not yet handled (its RecvQ) past which it
#: is closed ("Excess flood"): lines are read ahead of their handling so that an EOF is
#: seen at once, and this bounds what that holds.
MAX_RECVQ_BYTES = 1024 * 1024
#: A rate-limit refusal (429) of a PRIVMSG asking for at most this wait (ms) is waited
#: out and the message tried again (a flood throttled in order); a longer one (a room's
#: slow mode) is told to the client at once, so that no command waits behind it.
SHORT_RATE_LIMIT_MS = 2000
#: PRIVMSGs and NOTICEs the broker cannot take now (lost, reconnecting, 503) are kept
#: and sent again with their cmid once the client is back: at most this many per
#: connection, each for at most this many seconds (``zchat say -``'s SEND_RETRY_S), then
#: a FAIL.
MAX_HELD_MESSAGES = 100
HELD_FOR_S = SEND_RETRY_S
#: Failed logins (wrong name or password) one IRC client address may make before the
#: gateway refuses its logins itself, and how fast it earns another: a token bucket per
#: address (zchat/ratelimit.py), as the broker's ``login_rate_per_s``/``login_burst``.
#: Every gateway login reaches the broker from the gateway's one address, whose login
#: budget (30, then one per 2 s by default) all IRC users share unless the gateway tells
#: their addresses (``tell_addresses``, a broker's ``trusted_proxies``): without this, one
#: address guessing passwords held every other IRC user's login back (docs/security.md).
#: With them it still keeps each IRC address's guesses far below the broker's own limit.
FAILED_LOGIN_BURST = 5
FAILED_LOGIN_RATE_PER_S = 1 / 30
#: After a call found the broker silent (no answer within its timeout: a broker that
#: died without a word is not known gone before the client's heartbeat says so), the
#: connection's next calls in this many seconds fail at once (263) and its messages are
#: kept at once, unless the broker is heard from meanwhile: a third tester's commands
#: queued behind each other, 5 s each, 20 s in all.
BROKER_SILENT_S = 15.0
#: How long a MARK_READ waits, gathering the lines given meanwhile (``_mark_later``).
MARK_READ_DELAY_S = 0.5
#: How long a session's end waits for its last MARK_READs (``_settle_marks``).
MARKS_SETTLE_S = 0.5


@dataclass(frozen=True)
class ClientOptions:
    """How each connection's zchat client reaches the broker (``[client]``)."""

    server: str
    timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    encryption: str = "curve"
    server_key: str = ""
    key_server: str = ""

    def make(self) -> Client:
        return Client(self.server, timeout_s=self.timeout_s, reconnect=True,
                      reconnect_max_s=self.reconnect_max_s, encryption=self.encryption,
                      server_key=self.server_key, key_server=self.key_server)


class Gateway:
    """The listener(s) and every connection. ``start`` binds; ``shutdown`` tells every
    client ERROR, logs every session out and closes."""

    def __init__(self, settings: Settings, client_options: ClientOptions,
                 client_factory: Callable[[], Client] | None = None, *,
                 tell_addresses: bool = False) -> None:
        self.settings = settings
        self.client_options = client_options
        #: ``[irc] tell_addresses``: each connection's LOGIN and REGISTER tell the broker
        #: the IRC client's address (docs/PROTOCOL.md §6.3; the broker must trust this
        #: gateway's address, ``[broker] trusted_proxies``, docs/irc.md "Logging in").
        self.tell_addresses = tell_addresses
        self._untrusted_logged_s = 0.0
        self._factory = client_factory or client_options.make
        self._servers: list[asyncio.Server] = []
        self._sessions: set[_Session] = set()
        #: Guest accounts this gateway created and whose connection is still up (``[irc]
        #: guests``): name_key -> password. Forgotten when that connection ends.
        self.guest_passwords: dict[str, str] = {}
        #: Guest accounts in use by a connection now: a second one is ERR_NICKNAMEINUSE.
        self.guests_online: set[str] = set()
        #: What the IRC connections told of their users, for the others' WHO/WHOIS.
        self.peers: dict[str, Peer] = {}
        #: Client-only tags and multiline structure of messages in flight (relay.py).
        self.relays = Relays()
        self._guest_lock = asyncio.Lock()
        #: Failed logins per IRC client address (``address_key``): FAILED_LOGIN_BURST.
        self.failed_logins = BucketTable(FAILED_LOGIN_RATE_PER_S, FAILED_LOGIN_BURST)
        #: New connections per client address (``[irc] connections_per_minute_per_address``,
        #: as Ergo's connection throttling): None when off.
        rate = settings.connections_per_minute_per_address
        self.connection_rate = BucketTable(rate / 60.0, rate) if rate else None
        #: Connections held per client address (``address_of``).
        self._per_address: collections.Counter[str] = collections.Counter()

    def untrusted(self, reason: str) -> None:
        """The broker refused an address this gateway told (``tell_addresses``) with
        403: it does not list the gateway in ``[broker] trusted_proxies``. Logged as an
        error once a minute: every login through the gateway fails so."""
        now = time.monotonic()
        if now >= self._untrusted_logged_s:
            self._untrusted_logged_s = now + 60.0
            log.error("[irc] tell_addresses is on, but the broker does not trust this "
                      "gateway (%s): add its address to the broker's [broker] "
                      "trusted_proxies, or turn tell_addresses off", reason)

    async def start(self, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        server = await asyncio.start_server(self._serve, host, port, ssl=ssl_context,
                                            limit=READ_CHUNK)
        self._servers.append(server)
        sock = server.sockets[0].getsockname()
        return sock[0], sock[1]

    @property
    def connections(self) -> int:
        return len(self._sessions)

    async def shutdown(self, text: str = "gateway shutting down") -> None:
        for server in self._servers:
            server.close()
        sessions = list(self._sessions)
        for s in sessions:
            s.stop(text)
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.done.wait()) for s in sessions],
                               timeout=SHUTDOWN_WAIT_S)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 0.2)

    def refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` (``address_key``) is refused, or None:
        the address holds ``max_connections_per_address`` already (Ergo's
        ``max-concurrent-connections`` per IP: one client opening idle sockets must not
        take every place); or the gateway is full (``max_connections``) of registered
        connections. When it is full, or connections not yet registered hold
        UNREGISTERED_SHARE of the places, the oldest of those is closed to make room
        and the new one is let in (logged-in users keep their places, and a new login
        is never locked out by sockets that do not register)."""
        s = self.settings
        per = s.max_connections_per_address
        if per and self._per_address.get(address, 0) >= per:
            return f"too many connections from your address ({per})"
        if self.connection_rate is not None:
            wait_ms = self.connection_rate.take(address, time.monotonic())
            if wait_ms:
                return (f"too many new connections from your address (at most "
                        f"{s.connections_per_minute_per_address} a minute): wait "
                        f"{math.ceil(wait_ms / 1000)} s")
        held = [x for x in self._sessions if not x.evicted]  # (not those closing)
        # a connection whose login is under way is not closed (a fourth tester's honest
        # logins were, by sockets opened faster than they logged in)
        waiting = [x for x in held if not x.conn.registered and not x.logging_in]
        if len(held) >= s.max_connections or len(waiting) >= unregistered_cap(
                s.max_connections):
            if not waiting:
                return f"this gateway is full ({s.max_connections} connections)"
            # The oldest connection not yet registered makes room for the new one, rather
            # than the new one being refused, whether the gateway is full or those hold
            # their share: two testers locked every new login out with idle sockets from
            # a few addresses (each closed only after 60 s and opened again). An honest
            # client registers within a round trip or two, so idle sockets must now be
            # opened faster than that, without end, to keep anyone out.
            oldest = min(waiting, key=lambda x: x.opened)
            oldest.evicted = True
            log.info("IRC connection from %s not registered after %.1f s: closed to make "
                     "room (%d connections, %d not yet registered)", oldest.address,
                     time.monotonic() - oldest.opened, len(held), len(waiting))
            oldest.stop("Registration timeout: the gateway is busy (too many connections "
                        "not yet registered); connect again")
        return None

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        address = address_of(writer)
        refused = self.refusal(address)
        if refused is not None:
            log.warning("IRC connection from %s refused: %s", address, refused)
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(f"ERROR :Closing link: {refused}\r\n".encode())
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        self._per_address[address] += 1
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]


def address_of(writer: asyncio.StreamWriter) -> str:
    """The IRC client's address as ``address_key`` gives it (an IPv6 /64 as one): the
    key of the failed-login limiter and of ``max_connections_per_address``."""
    peer = writer.get_extra_info("peername")
    return address_key(peer[0] if isinstance(peer, tuple) else "", b"irc")


def unregistered_cap(max_connections: int) -> int:
    """How many connections not yet registered the gateway holds at once: half its
    places, rounded up (UNREGISTERED_SHARE)."""
    return max(1, math.ceil(max_connections * UNREGISTERED_SHARE))


@dataclass
class _Held:
    """A message kept until the broker is back: the core's call, the request, its cmid
    (the same on every try: the broker stores it once), and until when (loop time)."""

    call_id: int
    request: c.Post | c.DirectMessage
    cmid: str
    deadline: float


class _Session:
    """One IRC connection: its socket, its core, its zchat client."""

    def __init__(self, gateway: Gateway, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.conn = connection(gateway.settings, gateway.peers, gateway.relays)
        self.client: Client | None = None
        self.logged_out = False
        self.done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._main: asyncio.Task[None] | None = None
        self._closing = False
        self._busy_events = False
        self._finishing = False
        self.guest = ""  # the guest account this connection holds (``[irc] guests``)
        #: Lines read and not yet handled (``None``: an overlong one), their bytes, and
        #: a wake-up for ``_handle_lines``.
        self._lines: collections.deque[bytes | None] = collections.deque()
        self._lines_bytes = 0
        self._line_ready = asyncio.Event()
        self._gone = False       # EOF or reset: nothing more is handled
        self._quitting = False   # QUIT read: lines before it are handled without waits
        self._give_up = False    # a line before the QUIT would have waited: drop the rest
        #: Set when the client quits or goes: every wait of the connection ends.
        self._stop_waiting = asyncio.Event()
        #: Messages waiting for the broker (``_hold``), oldest first, and their sender.
        self._held: collections.deque[_Held] = collections.deque()
        self._resender: asyncio.Task[None] | None = None
        #: MARK_READ calls of the core waiting for ``_mark_later`` (``MARK_READ_DELAY_S``),
        #: the task that makes them, and whether they are made at once (the session ends).
        #: Until when (loop time) the broker counts as silent (``BROKER_SILENT_S``).
        self._silent_until = 0.0
        self._marks_due: list[c.Action] = []
        self._marker: asyncio.Task[None] | None = None
        self._marks_now = False
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]).partition("%")[0] if isinstance(peer, tuple) else ""
        #: The IRC client's address as a login bucket key (an IPv6 /64 as one).
        self.address = address_of(writer)
        #: When the connection was accepted (time.monotonic()), and whether it was closed
        #: to make room for a newer one while not yet registered (``Gateway.refusal``).
        self.opened = time.monotonic()
        self.evicted = False
        #: A LOGIN (PASS, SASL, a guest's, REGISTER's) is under way at the broker.
        self.logging_in = False
        #: The IRC client's IP address told to the broker in LOGIN and REGISTER (``[irc]
        #: tell_addresses``; an IPv6 zone left out), or None: nothing told.
        self.told_address = ip if gateway.tell_addresses and ip else None

    def stop(self, text: str) -> None:
        """SIGTERM: ERROR to the client, then the session ends."""
        self._write_actions(self.conn.shutdown(text))
        if self._main is not None and not self._finishing:  # (not the LOGOUT under way)
            self._main.cancel()

    async def run(self) -> None:
        self._main = asyncio.current_task()
        reading = asyncio.create_task(self._read_loop(), name="zchat-irc-read")
        self._tasks.append(reading)
        try:
            await self._handle_lines()
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.debug("connection ended: %s", exc)
        except Exception:  # the one place that catches all: one client's bug ends it only
            log.exception("IRC connection failed")
            # never a silent close: the client is told (a ZMQError "Too many open files"
            # opening its zchat sockets, or a bug of ours)
            with contextlib.suppress(Exception):
                self.writer.write(b"ERROR :Closing link: internal error of the gateway "
                                  b"(logged)\r\n")
        finally:
            await self._finish()

    async def _read_loop(self) -> None:
        """Read the client's lines as they come, into ``_lines`` for ``_handle_lines``,
        whatever that is waiting for: so an EOF or reset is seen at once, and the lines
        not yet handled are dropped then rather than posted for minutes by a dead
        connection. A QUIT ends the reading (``_quitting``)."""
        buf = LineBuffer()
        pinged = False
        try:
            while not self.conn.closed:
                timeout = IDLE_CLOSE_S if pinged else (
                    IDLE_PING_S if self.conn.registered else REGISTRATION_TIMEOUT_S)
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
                except TimeoutError:
                    if not self.conn.registered or pinged:
                        self._write_actions(self.conn.shutdown(
                            "Ping timeout" if pinged else "Registration timeout"))
                        break
                    self._write(b"PING :" + self.gateway.settings.server_name.encode()
                                + b"\r\n")
                    pinged = True
                    continue
                if not data:
                    break
                pinged = False
                for line in buf.receive_data(data):
                    self._lines.append(line)
                    self._lines_bytes += len(line) if line else 0
                    if line is not None and _is_quit(line):
                        self._quitting = True  # nothing after it is read
                        self._stop_waiting.set()
                        self._line_ready.set()
                        return
                self._line_ready.set()
                if self._lines_bytes > MAX_RECVQ_BYTES:
                    log.info("closing a client that floods (%d lines not yet handled)",
                             len(self._lines))
                    self._lines.clear()
                    self._write_actions(self.conn.shutdown("Excess flood"))
                    break
        except (ConnectionError, OSError) as exc:
            log.debug("connection ended: %s", exc)
        self._connection_gone()

    def _connection_gone(self) -> None:
        """EOF, reset or a timeout: drop what the client sent and was not handled yet (it
        is gone: nobody reads the answers), and end the session at once."""
        self._gone = True
        self._stop_waiting.set()
        if self._lines:
            log.info("IRC connection of %s ended: %d lines not yet handled dropped",
                     self.conn.account or self.conn.nick, len(self._lines))
            self._lines.clear()
        if self._main is not None and not self._finishing and not self.logging_in:
            self._main.cancel()
        # a LOGIN under way is let finish (bounded by the client's timeout): cancelled,
        # its session would stay at the broker, online, until its heartbeat timeout (a
        # fourth tester's NAMES showed such ghosts for 30 s); finished, the session ends
        # at once (``_handle_lines`` sees ``_gone``, ``_finish`` logs out)

    async def _handle_lines(self) -> None:
        """Handle the client's lines one at a time, each with the zchat calls it makes,
        so that replies keep the order of the commands."""
        while not self.conn.closed:
            if not self._lines:
                if self._gone or self._quitting:
                    return
                self._line_ready.clear()
                await self._line_ready.wait()
                continue
            if self._quitting and self._give_up:
                # a line before the QUIT would have waited: it and the rest before the
                # QUIT are dropped, the QUIT is handled
                dropped = [ln for ln in self._lines if ln is None or not _is_quit(ln)]
                if dropped:
                    log.info("IRC client %s quit: %d lines not yet handled dropped",
                             self.conn.account or self.conn.nick, len(dropped))
                self._lines = collections.deque(
                    ln for ln in self._lines if ln is not None and _is_quit(ln))
                self._give_up = False
                continue
            line = self._lines.popleft()
            self._lines_bytes -= len(line) if line else 0
            await self._handle_line(line)

    async def _handle_line(self, line: bytes | None) -> None:
        if line is None or body_too_long(line):
            await self._carry_out(self.conn.overlong())
            return
        try:
            msg = parse_line(line)
        except UnicodeDecodeError:
            await self._carry_out(self.conn.bad_line("utf8"))
            return
        except IrcParseError:
            return
        await self._carry_out(self.conn.receive(msg))

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the client quits or goes: False then (the
        caller stops waiting and gives up)."""
        if self._stop_waiting.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_waiting.wait(), seconds)
        return not self._stop_waiting.is_set()

    async def _carry_out(self, actions: list[c.Action], marks_now: bool = False) -> None:
        """Do what the core said, feeding each call's answer back, until nothing is left.
        A MARK_READ is left to ``_mark_later`` unless ``marks_now`` (those of ``actions``
        only: one made because of an answer waits again)."""
        queue = list(actions)
        made_now = {id(a) for a in actions} if marks_now else set()
        while queue:
            action = queue.pop(0)
            if isinstance(action, c.Send):
                self._write(serialize(action.message))
            elif isinstance(action, c.RelayTagmsg):
                self._relay_tagmsg(action)
            elif isinstance(action, c.Close):
                self._closing = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.writer.drain(), 1.0)
            elif isinstance(action.request, c.Post | c.DirectMessage):
                queue[:0] = await self._message(action.id, action.request)
            elif (isinstance(action.request, c.MarkRead) and not self._marks_now
                  and id(action) not in made_now):
                self._marks_due.append(action)  # made by _mark_later, off this path
                if self._marker is None or self._marker.done():
                    self._marker = asyncio.create_task(self._mark_later(),
                                                       name="zchat-irc-marks")
                    self._tasks.append(self._marker)
            else:
                if isinstance(action.request, c.Logout):
                    await self._settle_marks()  # the read marker before the session ends
                elif self._broker_silent():
                    # answered at once, as the broker is (PING: its PONG without the
                    # broker's round trip)
                    queue[:0] = self.conn.result(action.id, None) \
                        if isinstance(action.request, c.Ping) else self.conn.failure(
                            action.id, 503, "the zchat broker does not answer")
                    continue
                try:
                    reply = await self._do(action.request)
                except RequestFailed as exc:
                    self._silent_until = 0.0  # it answered
                    queue[:0] = self.conn.failure(action.id, int(exc.status), exc.reason)
                except ConnectionFailed as exc:
                    self._found_silent()
                    queue[:0] = self.conn.failure(action.id, 503, str(exc))
                except ZchatError as exc:
                    queue[:0] = self.conn.failure(action.id, 503, str(exc))
                else:
                    queue[:0] = self.conn.result(action.id, reply)
        with contextlib.suppress(ConnectionError, OSError):
            if self.writer.transport.get_write_buffer_size() > 64 * 1024:
                await asyncio.wait_for(self.writer.drain(), 5.0)

    async def _mark_later(self) -> None:
        """Make the MARK_READ calls due after ``MARK_READ_DELAY_S`` (at once when the
        client quits or goes). The core keeps one MARK_READ in flight per room and marks
        what came meanwhile with the next, so a busy room costs about one MARK_READ per
        delay instead of one per line; and the events' path never waits for the broker's
        answer to one (a benchmark found 92,000 MARK_READs for 92,000 lines, each awaited
        before the next event: docs/PERFORMANCE.md)."""
        await self._pause(MARK_READ_DELAY_S)
        await self._flush_marks()

    async def _settle_marks(self) -> None:
        """The session ends: every MARK_READ due is made now (what the IRC client was
        given is not played back at its next login), the one under way waited for."""
        self._marks_now = True
        marker = self._marker

        async def settle() -> None:
            if marker is not None and not marker.done() and marker is not asyncio.current_task():
                await asyncio.wait({marker})
            await self._flush_marks()

        with contextlib.suppress(Exception):  # bounded: SIGTERM's exit within 2 s
            await asyncio.wait_for(settle(), MARKS_SETTLE_S)

    async def _flush_marks(self) -> None:
        due, self._marks_due = self._marks_due, []
        if due:
            await self._carry_out(due, marks_now=True)

    async def _message(self, call_id: int, req: c.Post | c.DirectMessage) -> list[c.Action]:
        """A PRIVMSG or NOTICE: sent with a cmid of its own; the answer for the core. One
        the broker cannot take now (lost, reconnecting, 503), or one behind such, is
        kept to be sent again with its cmid once the client is back (``_hold``)."""
        cmid = new_cmid()
        if self._held:  # behind the ones waiting for the broker: the order is kept
            return self._hold(call_id, req, cmid)
        if self._broker_silent() and self._may_hold():
            return self._hold(call_id, req, cmid)
        try:
            reply = await self._send_message(req, cmid)
        except RequestFailed as exc:
            if exc.status == Status.UNAVAILABLE and self._may_hold():
                return self._hold(call_id, req, cmid)
            return self.conn.failure(call_id, int(exc.status), exc.reason)
        except ConnectionFailed as exc:
            self._found_silent()
            if self._may_hold():
                return self._hold(call_id, req, cmid)
            return self.conn.failure(call_id, 503, str(exc))
        except ZchatError as exc:
            return self.conn.failure(call_id, 503, str(exc))
        return self.conn.result(call_id, reply)

    def _broker_silent(self) -> bool:
        return asyncio.get_running_loop().time() < self._silent_until

    def _found_silent(self) -> None:
        """A call got no answer in time: the next calls of BROKER_SILENT_S fail at once."""
        self._silent_until = asyncio.get_running_loop().time() + BROKER_SILENT_S

    async def _resend_one(self, h: _Held, left_s: float) -> Any:
        return await self._send_message(h.request, h.cmid, max(left_s, 0.001))

    def _may_hold(self) -> bool:
        client = self.client
        return client is not None and client.reconnect and client.state != "closed" \
            and not self._quitting and not self._gone

    def _hold(self, call_id: int, req: c.Post | c.DirectMessage, cmid: str) -> list[c.Action]:
        """Keep a message for ``_resend_held`` (at most MAX_HELD_MESSAGES, each for
        HELD_FOR_S), as ``zchat say -`` does through a broker restart."""
        if len(self._held) >= MAX_HELD_MESSAGES:
            return self.conn.failure(call_id, 503, f"not sent: {MAX_HELD_MESSAGES} "
                                     "messages already wait for the zchat broker")
        loop = asyncio.get_running_loop()
        first = not self._held
        self._held.append(_Held(call_id, req, cmid, loop.time() + HELD_FOR_S))
        if self._resender is None or self._resender.done():
            self._resender = asyncio.create_task(self._resend_held(),
                                                 name="zchat-irc-resend")
            self._tasks.append(self._resender)
        return self.conn.held(call_id, first, HELD_FOR_S)

    async def _resend_held(self) -> None:
        """Send the kept messages in order, each with its cmid, waiting for the client
        to be back (``Client.through_reconnects``, as ``zchat say -``); one whose time
        is up is answered with a FAIL."""
        loop = asyncio.get_running_loop()
        client = self.client
        while self._held and client is not None:
            h = self._held[0]
            left_s = h.deadline - loop.time()
            gave_up = (f"not sent: the zchat broker did not come back within "
                       f"{HELD_FOR_S:g} s")
            try:
                if left_s <= 0:
                    raise ConnectionFailed(gave_up)
                reply = await client.through_reconnects(
                    functools.partial(self._resend_one, h), left_s)
            except RequestFailed as exc:
                actions = self.conn.held_answer(
                    h.call_id, status=int(exc.status),
                    reason=gave_up if exc.status == Status.UNAVAILABLE else exc.reason)
            except ZchatError:
                actions = self.conn.held_answer(h.call_id, status=503, reason=gave_up)
            else:
                actions = self.conn.held_answer(h.call_id, reply)
            self._held.popleft()
            await self._carry_out(actions)

    async def _send_message(self, req: c.Post | c.DirectMessage, cmid: str,
                            retry_for_s: float = 0.0) -> Any:
        """One SEND or DM with ``cmid``. A 429 that asks for a short wait (at most
        SHORT_RATE_LIMIT_MS: a flood being throttled) is waited out and tried again, at
        most RATE_LIMIT_TRIES times; a longer one (slow mode) is raised at once, its
        reason saying how long, so that nothing else of the connection waits behind it.
        The client quitting or going ends a wait (the 429 is raised). Raises
        RequestFailed, ConnectionFailed."""
        client = self.client
        if client is None:
            raise ConnectionFailed("not logged in")
        for attempt in range(1, RATE_LIMIT_TRIES + 1):
            try:
                if isinstance(req, c.Post):
                    return await client.send(req.room, req.text, req.kind,  # type: ignore[arg-type]
                                             cmid=cmid, retry_for_s=retry_for_s,
                                             patient=False,
                                             retry_unavailable=retry_for_s > 0,
                                             notice=req.notice)
                return await client.dm(req.to, req.text, cmid=cmid, retry_for_s=retry_for_s,
                                       patient=False, retry_unavailable=retry_for_s > 0,
                                       notice=req.notice)
            except RequestFailed as exc:
                if exc.status != Status.TOO_MANY_REQUESTS or attempt == RATE_LIMIT_TRIES \
                        or exc.retry_after_ms > SHORT_RATE_LIMIT_MS:
                    raise
                wait_s = rate_limit_wait_s(exc.retry_after_ms,
                                           random.uniform(1.0, 1.0 + RATE_LIMIT_JITTER))
                if not await self._pause(wait_s):
                    self._give_up = True
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def _write_actions(self, actions: list[c.Action]) -> None:
        for action in actions:
            if isinstance(action, c.Send):
                self._write(serialize(action.message))
            elif isinstance(action, c.RelayTagmsg):
                self._relay_tagmsg(action)

    def _relay_tagmsg(self, r: c.RelayTagmsg) -> None:
        """A TAGMSG to the gateway's other connections (zchat carries no tags): each
        core says whether its client sees it; what it says is written at once."""
        for other in list(self.gateway._sessions):  # a snapshot: writing may end one
            if other is not self:
                other._write_actions(other.conn.relayed_tagmsg(r))

    def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_SENDQ_BYTES:
            log.info("closing a client that does not read (SendQ exceeded)")
            self.writer.transport.abort()
            if self._main is not None:
                self._main.cancel()
            return
        self.writer.write(data)

    async def _client(self) -> Client:
        if self.client is None:
            self.client = self.gateway._factory()
        await self.client.connect()
        return self.client

    async def _login(self, name: str, password: str) -> Any:
        client = await self._client()
        reply = await client.login(name, password, address=self.told_address)
        self._tasks.append(asyncio.create_task(self._read_events(client),
                                               name="zchat-irc-events"))
        return reply

    async def _do(self, req: c.Request) -> Any:
        if isinstance(req, c.Login | c.LoginGuest | c.RegisterAccount):
            self.logging_in = True
            try:
                if isinstance(req, c.Login):
                    return await self._login_limited(req.name, req.password)
                if isinstance(req, c.LoginGuest):
                    return await self._login_guest(req.name)
                return await register_account(self, req)
            except RequestFailed as exc:
                if exc.status == Status.FORBIDDEN and self.told_address is not None \
                        and exc.reason.startswith("only a trusted proxy"):
                    self.gateway.untrusted(exc.reason)
                raise
            finally:
                self.logging_in = False
        if isinstance(req, c.ClaimGuest):
            return await claim_guest(self, req)
        client = self.client
        if client is None:
            raise ConnectionFailed("not logged in")
        if isinstance(req, c.Join):
            return await client.join(req.room)
        if isinstance(req, c.Part):
            return await client.part(req.room, req.reason)
        if isinstance(req, c.SetTopic):
            return await client.set_topic(req.room, req.topic)
        if isinstance(req, c.Who):
            return await client.who(req.room)
        if isinstance(req, c.Whois):
            return await client.whois(req.name)
        if isinstance(req, c.ListRooms):
            return await client.list_rooms()
        if isinstance(req, c.RoomInfo):
            return await client.room_info(req.room)
        if isinstance(req, c.SetPresence):
            return await client.set_presence(req.presence, req.text)
        if isinstance(req, c.Kick):
            return await client.kick(req.room, req.name, req.reason)
        if isinstance(req, c.Invite):
            return await client.invite(req.room, req.name)
        if isinstance(req, c.SetRole):
            return await client.set_role(req.room, req.name, req.role)
        if isinstance(req, c.SetRoom):
            return await client.set_room(req.room, private=req.private, locked=req.locked)
        if isinstance(req, c.History):
            return await client.history(req.room, limit=req.limit)
        if isinstance(req, c.Ban):
            return await client.ban(req.name, req.room, duration_s=req.duration_s)
        if isinstance(req, c.Unban):
            return await client.unban(req.name, req.room)
        if isinstance(req, c.ListBans):
            return await client.bans(req.room)
        if isinstance(req, c.MarkRead):
            return await client.mark_read(room=req.room, upto=req.upto)
        if isinstance(req, c.DmHistory):
            return await client.dm_history(req.peer, limit=req.limit)
        if isinstance(req, c.Ping):
            try:
                await client.ping()
            except ConnectionFailed:
                self._found_silent()  # the commands behind it are answered at once
            except (ZchatError, TimeoutError):
                pass
            for _ in range(100):  # the events heard meanwhile, written before the PONG
                if not client.events_waiting and not self._busy_events:
                    break
                await asyncio.sleep(0.001)
            return None
        if isinstance(req, c.Logout):
            await asyncio.wait_for(client.logout(req.text), LOGOUT_WAIT_S)
            self.logged_out = True
            return None
        raise AssertionError(f"unknown call {req!r}")

    async def _login_limited(self, name: str, password: str) -> Any:
        """LOGIN, unless this IRC client's address failed FAILED_LOGIN_BURST times
        lately: then RequestFailed 429 at once, without asking the broker. A wrong name
        or password (401) costs the address a token."""
        table = self.gateway.failed_logins
        wait_ms = table.wait_ms(self.address, time.monotonic())
        if wait_ms:
            log.info("login of %s from %s refused by the gateway: too many failed logins",
                     name, self.address)
            raise RequestFailed(Status.TOO_MANY_REQUESTS, "too many failed logins from "
                                f"your address: wait {math.ceil(wait_ms / 1000)} s", wait_ms)
        try:
            return await self._login(name, password)
        except RequestFailed as exc:
            if exc.status == Status.UNAUTHORIZED:
                table.take(self.address, time.monotonic())
            raise

    async def _login_guest(self, name: str) -> Any:
        """``[irc] guests``: the account ``name`` created by this gateway with a password
        of its own (REGISTER), or logged in with it when created before. An account that
        exists otherwise answers 409 (ERR_NICKNAMEINUSE)."""
        key = name_key(name)
        client = await self._client()
        async with self.gateway._guest_lock:
            if key in self.gateway.guests_online:
                raise RequestFailed(Status.CONFLICT, f"{name} is connected already")
            password = self.gateway.guest_passwords.get(key)
            if password is None:
                password = secrets.token_urlsafe(24)
                await client.register(name, password, address=self.told_address)
                self.gateway.guest_passwords[key] = password
            self.gateway.guests_online.add(key)
            self.guest = key
        return await self._login(name, password)

    async def _read_events(self, client: Client) -> None:
        try:
            async for ev in client.events():
                if self.conn.closed:
                    break
                self._silent_until = 0.0  # the broker (or the client's reconnect) is heard
                self._busy_events = True
                try:
                    await self._carry_out(self.conn.event(ev))
                finally:
                    self._busy_events = False
                if self.conn.closed and self._main is not None and not self._finishing:
                    self._main.cancel()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError):
            if self._main is not None:
                self._main.cancel()

    async def _finish(self) -> None:
        """The IRC connection ended (QUIT, EOF, error, shutdown): end the zchat session
        (one offline event), stop the tasks, close the socket."""
        self._finishing = True
        if self.guest:
            # the guest account is never handed to another connection: its password is
            # forgotten, so its nick is taken (433) for good, and its DMs with it
            self.gateway.guests_online.discard(self.guest)
            self.gateway.guest_passwords.pop(self.guest, None)
        self.conn.forget_peer()
        if self._held:
            log.info("IRC connection of %s ended: %d messages waiting for the broker "
                     "dropped", self.conn.account, len(self._held))
        self._stop_waiting.set()
        if self.conn.logged_in and not self.logged_out and self.client is not None \
                and self.client.connected:
            await self._settle_marks()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), 0.5)
        self.writer.close()
        client = self.client
        if client is not None:
            if self.conn.logged_in and not self.logged_out and client.connected:
                with contextlib.suppress(ZchatError, TimeoutError, OSError):
                    await asyncio.wait_for(client.logout("connection closed"),
                                           LOGOUT_WAIT_S)
            with contextlib.suppress(Exception):
                await client.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=0.5)
        self.done.set()


def _is_quit(line: bytes) -> bool:
    """Whether ``line`` is a QUIT (tags and source skipped; the reader's look ahead)."""
    words = line.split()
    while words and words[0][:1] in (b"@", b":"):
        words.pop(0)
    return bool(words) and words[0].upper() == b"QUIT"


def settings_from(config: Any) -> Settings:
    """The core's Settings from a ``zchat.config.Config``."""
    irc = config.irc
    return Settings(server_name=irc.server_name, network=irc.network, guests=irc.guests,
                    autojoin=irc.autojoin, playback=irc.playback,
                    max_connections=irc.max_connections,
                    max_connections_per_address=irc.max_connections_per_address,
                    connections_per_minute_per_address=irc.connections_per_minute_per_address,
                    motd=tuple(irc.motd.splitlines()) if irc.motd else ())


def client_options_from(config: Any) -> ClientOptions:
    cl = config.client
    return ClientOptions(server=cl.server, timeout_s=cl.timeout_s,
                         reconnect_max_s=cl.reconnect_max_s, encryption=cl.encryption,
                         server_key=cl.server_key, key_server=cl.key_server)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(config: Any, ready: Callable[[list[str]], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the gateway of ``config`` until ``stop`` is set (or the task is cancelled),
    then shut it down (ERROR to every client, every session logged out)."""
    from zchat.config import listen_address

    gateway = Gateway(settings_from(config), client_options_from(config),
                      tell_addresses=config.irc.tell_addresses)
    irc = config.irc
    bound: list[str] = []
    if irc.listen:
        host, port = listen_address(irc.listen)
        h, pt = await gateway.start(host, port)
        bound.append(f"irc://{h}:{pt}")
    if irc.tls_listen:
        host, port = listen_address(irc.tls_listen)
        h, pt = await gateway.start(host, port, tls_context(irc.tls_cert, irc.tls_key))
        bound.append(f"ircs://{h}:{pt}")
    if ready is not None:
        ready(bound)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await gateway.shutdown()


#: Open files one IRC connection holds: its socket, and its zchat client's DEALER and
#: SUB (each a TCP connection and a libzmq mailbox), with one spare for a reconnect.
FILES_PER_CONNECTION = 6
#: Open files kept for the rest of the process (listeners, logs, libzmq's own, the
#: asyncio loop, the key service).
FILES_RESERVED = 64


def fit_limits(max_connections: int) -> int:
    """Raise this process's open-files soft limit (RLIMIT_NOFILE, up to the hard limit)
    and libzmq's socket limit of the process's context (ZMQ_MAX_SOCKETS: 1,023 by
    default, two per connection) so that ``max_connections`` IRC connections fit; must
    run before the context's first socket (libzmq reads the limit then). Returns how
    many connections fit: ``max_connections``, or fewer when the hard limit is too low."""
    import resource

    import zmq

    need = FILES_PER_CONNECTION * max_connections + FILES_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    fits = max_connections
    if soft != resource.RLIM_INFINITY:
        fits = max(1, min(max_connections, (soft - FILES_RESERVED) // FILES_PER_CONNECTION))
    context: zmq.Context[Any] = zmq.Context.instance()
    context.set(zmq.MAX_SOCKETS, min(context.get(zmq.SOCKET_LIMIT), 2 * fits + 64))
    return fits


def run_gateway(config: Any) -> int:
    """``zchat irc``'s body: serve until SIGTERM, SIGINT or SIGHUP (the terminal closed:
    the same orderly shutdown, ERROR to every client and every session logged out);
    exit code 0. Raises OSError when a listener cannot bind."""
    import dataclasses
    import signal
    import sys

    fits = fit_limits(config.irc.max_connections)
    if fits < config.irc.max_connections:
        log.warning("[irc] max_connections lowered from %d to %d: the open-files hard limit "
                    "(ulimit -Hn) is too low for more (%d files per connection)",
                    config.irc.max_connections, fits, FILES_PER_CONNECTION)
        config = dataclasses.replace(config, irc=dataclasses.replace(
            config.irc, max_connections=fits))

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)

        def ready(bound: list[str]) -> None:
            print(f"zchat irc: listening on {', '.join(bound)}, broker "
                  f"{config.client.server}", flush=True)

        await serve(config, ready, stop)
        return 0

    try:
        return asyncio.run(main())
    except OSError as exc:
        print(f"zchat: error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
