"""What the IRC gateway's end-to-end tests share (tests/test_irc_gateway.py,
tests/test_irc_texts.py): a plain socket IRC client, the gateway on a free loopback
port with a real broker (tests/conftest.py ``harness``), logging in, accounts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from zchat.irc.codec import Message, parse_line
from zchat.irc.server import ClientOptions, Gateway
from zchat.irc.state import Settings
from zchat.testing import DEFAULT_PASSWORD, Harness

LINE_WAIT_S = 5.0


class IrcClient:
    """A plain IRC client on a socket: send lines, wait for a line that matches."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen: list[Message] = []

    def send(self, line: str | bytes) -> None:
        raw = line.encode() if isinstance(line, str) else line
        self.writer.write(raw + b"\r\n")

    async def expect(self, pred: Callable[[Message], bool], what: str = "a line",
                     timeout_s: float = LINE_WAIT_S) -> Message:
        async def read() -> Message:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise AssertionError(f"connection closed while waiting for {what}; "
                                         f"seen {self.seen}")
                msg = parse_line(raw)
                self.seen.append(msg)
                if pred(msg):
                    return msg
        try:
            return await asyncio.wait_for(read(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no {what} in {timeout_s} s; seen {self.seen}") from None

    async def command(self, name: str, timeout_s: float = LINE_WAIT_S) -> Message:
        return await self.expect(lambda m: m.command == name, name, timeout_s)

    async def sync(self) -> list[Message]:
        """Everything up to the PONG of a PING sent now (the gateway answers in order)."""
        start = len(self.seen)
        self.send("PING sync")
        await self.expect(lambda m: m.command == "PONG" and m.params[-1] == "sync", "PONG")
        return self.seen[start:-1]

    async def closed(self, timeout_s: float = LINE_WAIT_S) -> None:
        async def eof() -> None:
            while await self.reader.readline():
                pass
        await asyncio.wait_for(eof(), timeout_s)

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def gateway(harness: Harness, **settings: object) -> AsyncIterator[tuple[Gateway, int]]:
    gw = Gateway(Settings(**settings), ClientOptions(server=harness.server))  # type: ignore[arg-type]
    _host, port = await gw.start("127.0.0.1", 0)
    try:
        yield gw, port
    finally:
        await gw.shutdown()


async def connect(port: int, nick: str, password: str | None = DEFAULT_PASSWORD,
                  caps: str = "") -> IrcClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    irc = IrcClient(reader, writer)
    if caps:
        irc.send(f"CAP REQ :{caps}")
    if password is not None:
        irc.send(f"PASS :{password}")
    irc.send(f"NICK {nick}")
    irc.send("USER u 0 * :Real")
    if caps:
        irc.send("CAP END")
    if password is not None:
        await irc.command("001")
    return irc


async def in_channel(port: int, *nicks: str, channel: str = "#dev") -> list[IrcClient]:
    """An IRC client per nick (``connect``), each joined to ``channel`` (its 366 read)."""
    clients = [await connect(port, nick) for nick in nicks]
    for irc in clients:
        irc.send(f"JOIN {channel}")
        await irc.command("366")
    return clients


async def registered(harness: Harness, *names: str) -> None:
    for name in names:
        async with harness.client(name) as client:
            await client.logout()
