"""What the console does with input that arrives faster than a person types: pastes and
lines typed ahead during a stall (never run, never sent unasked), a paste over the
broker's line limit, a burst of /join. A real broker thread on ``inproc://``, real
clients, and the real console fed from a pipe input (tests/test_console_app.py).
"""

from __future__ import annotations

from conftest import run
from test_console_app import ENTER, console_session, until

from zchat.testing import running_broker


def test_a_burst_of_joins_gets_every_room_without_an_error() -> None:
    """A tester typed ``/join jN`` 50 ms apart: past the JOIN rate limit some were
    refused (429), and the only trace was a "sending too fast" line. Each /join now
    waits its turn (Client.join retries on 429)."""
    with running_broker(send_rate_per_s=20.0, send_burst=2) as h:
        async def main() -> None:
            async with console_session(h) as s:
                rooms = [f"j{i}" for i in range(10)]
                for room in rooms:
                    s.send(f"/join {room}" + ENTER)
                    # read on its own, as typed (two lines in one read are a paste)
                    await until(lambda room=room: s.console.history.entries[-1:]
                                == (f"/join {room}",), what=f"/join {room} read")
                await until(lambda: set(rooms) <= set(s.console.conversations),
                            timeout=10, what="every room open")
                assert set(rooms) <= set(s.client.rooms)
                assert s.errors() == []

        run(main())
