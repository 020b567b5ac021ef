"""A subscriber paused at each point of joining a room still hands its application every
room message once and in sequence order (docs/PROTOCOL.md §14, G2; issue 13 §1).

The subscriber is a real Client on its own thread and event loop, against a real broker
(inproc, real SQLite). "Paused" is what SIGSTOP does to its Python side: at the chosen
point its loop thread blocks until the test lets it go, while messages pile up in libzmq
and, past the high-water marks (small here), are dropped. The points (issue 13 §1):

* ``following`` — just joined, before its first heartbeat round trip (before its first
  PONG);
* ``ping`` — its first (catch-up) PING sent, its PONG not yet read;
* ``backfill`` — a HISTORY request of a gap repair sent, its page not yet read (the first
  pause at ``following`` makes the gap).

For each: a new room, and a busy one (300 messages of history and a sender posting all the
time, also while the subscriber joins). ``ZCHAT_PAUSE_RUNS`` sets the runs per case (10 by
default; the issue's hundred: ``ZCHAT_PAUSE_RUNS=100 pytest tests/test_paused_subscriber.py``).
tests/test_cli_paused_tail.py does the issue's own repro with SIGSTOP on ``zchat tail``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest
from conftest import run, wait_until

from zchat import wire as p
from zchat.client import client as client_module
from zchat.client import session
from zchat.client.client import Client
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker

RUNS = int(os.environ.get("ZCHAT_PAUSE_RUNS", "10"))
#: Tiny high-water marks, so that a pause of a few hundred messages loses some of them.
HWM = 20
BURST = 150  # messages posted while the subscriber is paused
HISTORY = 300  # messages already in a busy room


class PausingClient(Client):
    """A Client whose loop blocks at the points named in ``points``, in that order, until
    the test sets ``resume`` (and clears it again for the next point)."""

    def __init__(self, *args: object, points: list[str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.points = list(points)
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.joined = False

    def pause_at(self, point: str) -> None:
        if self.points and self.points[0] == point:
            self.points.pop(0)
            self.paused.set()
            assert self.resume.wait(30), "the test never resumed the subscriber"
            self.resume.clear()

    async def request(self, req: p.Request, timeout_s: float | None = None) -> object:
        point = {p.Ping: "ping", p.FetchHistory: "backfill"}.get(type(req))
        if point is None or not self.joined:
            return await super().request(req, timeout_s)
        reply = asyncio.ensure_future(super().request(req, timeout_s))
        while not self._pending:  # until the request is on the DEALER
            await asyncio.sleep(0)
        self.pause_at(point)
        return await reply


class Subscriber:
    """``carol`` on a thread of her own: joins ``room``, pauses at ``points``, and records
    the seq of every room message her application is handed."""

    def __init__(self, harness: Harness, room: str, points: list[str]) -> None:
        self.harness, self.room = harness, room
        self.client = PausingClient(harness.server, context=harness.context,
                                    points=points)
        self.joined_at: int | None = None
        self.seqs: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _main(self) -> None:
        client = self.client
        await client.connect()
        try:
            await client.login("carol", DEFAULT_PASSWORD)
            reply = await client.join(self.room)
            self.joined_at = reply.last_seq
            client.joined = True
            client.pause_at("following")
            while not self._stop.is_set():
                event = await client.next_event(0.05)
                if isinstance(event, p.MessagePosted) and event.room == self.room:
                    self.seqs.append(event.seq)
        finally:
            await client.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the subscriber's thread did not end"
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module")
def broker() -> Iterator[Harness]:
    saved = client_module.SUB_RCVHWM, session.CATCH_UP_PINGS_S
    # Small queues so that a pause loses messages; quick catch-up PINGs so that the
    # ``ping`` point comes soon after the join.
    client_module.SUB_RCVHWM, session.CATCH_UP_PINGS_S = HWM, (0.05, 0.3)
    try:
        with running_broker(send_rate_per_s=0, room_create_rate_per_s=0,
                            max_rooms_created=0, sndhwm=HWM,
                            pub_sndhwm=HWM) as harness:
            async def accounts() -> None:
                for name in ("bob", "carol"):
                    async with harness.client(name):
                        pass
            run(accounts())
            yield harness
    finally:
        client_module.SUB_RCVHWM, session.CATCH_UP_PINGS_S = saved


async def post(bob: Client, room: str, count: int, tag: str) -> None:
    """``count`` messages to ``room``, several in flight at once (a flood, as from a paste
    or a bot)."""
    for start in range(0, count, 25):
        await asyncio.gather(*(bob.send(room, f"{tag} {i}")
                               for i in range(start, min(start + 25, count))))


async def one_run(harness: Harness, room: str, points: list[str], busy: bool) -> None:
    async with harness.client("bob", register=False) as bob:
        await bob.join(room)
        if busy:
            await post(bob, room, HISTORY, "old")
        chatter_on = asyncio.Event()
        chatter_on.set()

        async def chatter() -> None:  # a busy room: someone is always talking
            i = 0
            while chatter_on.is_set():
                await bob.send(room, f"chatter {i}")
                i += 1
                await asyncio.sleep(0.002)  # a talking rate, not a wait for anything

        talker = asyncio.create_task(chatter()) if busy else None
        carol = Subscriber(harness, room, points)
        carol.start()
        try:
            for point in points:
                await asyncio.to_thread(wait_until, carol.client.paused.is_set, 10.0,
                                        f"carol to pause at {point}")
                carol.client.paused.clear()
                await post(bob, room, BURST, point)
                carol.client.resume.set()
            await post(bob, room, 20, "after")
            if talker is not None:
                chatter_on.clear()
                await talker
            last = (await bob.history(room, limit=1)).messages[-1].seq
            await asyncio.to_thread(wait_until, lambda: carol.seqs[-1:] == [last], 10.0,
                                    f"carol to be handed #{last}")
        finally:
            carol.client.points.clear()
            carol.client.resume.set()
            await asyncio.to_thread(carol.stop)
        assert carol.joined_at is not None
        assert carol.seqs == list(range(carol.joined_at + 1, last + 1)), (
            f"joined at #{carol.joined_at}; handed {len(carol.seqs)} messages, the first "
            f"{carol.seqs[:3]}, out of order at "
            f"{[(a, b) for a, b in zip(carol.seqs, carol.seqs[1:], strict=False) if b != a + 1][:5]}")


POINTS = {"before the first PONG": ["following"], "during a catch-up PING": ["ping"],
          "during a backfill": ["following", "backfill"]}


@pytest.mark.timeout(60 + 15 * RUNS)
@pytest.mark.parametrize("busy", [False, True], ids=["new room", "busy room"])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_subscriber_paused_while_joining_gets_every_message_once_in_order(
        broker: Harness, point: str, busy: bool) -> None:
    tag = f"{'b' if busy else 'n'}{list(POINTS).index(point)}"
    for i in range(RUNS):
        run(one_run(broker, f"{tag}x{i}", POINTS[point], busy), timeout_s=60)
