"""``zchat tail`` prints the unread DMs of all conversations together, oldest first, paging
each conversation in small pages as the merge reaches its end (zchat.cli.TAIL_DM_PAGE), so
that a flood of thousands of unread DMs does not hold the first line back until all of
them were fetched (a tester's 28,000 DMs from 30 senders: the first line after 96 s, the
pages charged to the reading budget). A real broker thread on inproc:// and real clients;
the client's ``dm_history`` is wrapped only to record what was asked."""

from __future__ import annotations

from typing import Any

from conftest import run

from zchat.cli import TAIL_DM_PAGE, _merged_unread_dms
from zchat.testing import running_broker

SENDERS = ("ann", "bob", "cat")
EACH = 2 * TAIL_DM_PAGE + 7


def test_unread_dms_are_merged_oldest_first_a_page_at_a_time() -> None:
    async def main() -> None:
        with running_broker(send_rate_per_s=0, account_send_rate_per_s=0,
                            read_rate_bytes_per_s=0) as h:
            async with h.client("vic"):
                pass
            async with h.client("ann") as ann, h.client("bob") as bob, \
                    h.client("cat") as cat:
                for i in range(EACH):  # interleaved, so that the merge must interleave
                    for sender in (ann, bob, cat):
                        await sender.dm("vic", f"{sender.name} {i}")
                await ann.dm("bob", "not for vic")
            async with h.client("vic", register=False) as vic:
                asked: list[tuple[str, int | None]] = []
                real = vic.dm_history

                async def recording(name: str, *args: Any, **kwargs: Any) -> Any:
                    asked.append((name, kwargs.get("limit")))
                    return await real(name, *args, **kwargs)

                vic.dm_history = recording  # type: ignore[method-assign]
                conversations = vic.unread.dms
                assert sorted(c.peer for c in conversations) == list(SENDERS)
                merged = _merged_unread_dms(vic, conversations, None)
                first = await anext(merged)
                assert first.text == "ann 0"
                # one page of each conversation before the first line, no more
                assert sorted(asked) == [(s, TAIL_DM_PAGE) for s in SENDERS]
                rest = [m async for m in merged]
                texts = [first.text] + [m.text for m in rest]
                assert texts == [f"{s} {i}" for i in range(EACH) for s in SENDERS]
                ids = [first.id] + [m.id for m in rest]
                assert ids == sorted(ids)
                # each conversation paged to its end: 3 pages (50, 50, 7), and no page
                # beyond it
                assert len(asked) == 3 * len(SENDERS)

                asked.clear()
                few = [m.text async for m in _merged_unread_dms(vic, conversations, 4)]
                assert few == ["ann 0", "bob 0", "cat 0", "ann 1"]
                assert sorted(asked) == [(s, 4) for s in SENDERS]

    run(main(), timeout_s=60)
