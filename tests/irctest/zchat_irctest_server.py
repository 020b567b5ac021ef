"""The server irctest's controller starts (tests/irctest/zchat_controller.py): the zchat
broker (its loop in a thread, zchat.broker.loop.BrokerThread, bound on the config's tcp
endpoints) and the IRC gateway (zchat.irc.server.serve) in one process, so that each
irctest test pays for one Python start instead of two. Usage: ``python
zchat_irctest_server.py CONFIG``; SIGTERM stops both (the gateway first: its clients get
ERROR and log out)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from zchat.broker.loop import BrokerThread
from zchat.config import data_dir, load_config
from zchat.irc.server import serve
from zchat.store import open_store


def main() -> int:
    config = load_config(Path(sys.argv[1]))
    directory = data_dir(config.broker)
    directory.mkdir(parents=True, exist_ok=True)
    store = open_store(str(directory / "zchat.db"))
    try:
        with BrokerThread(config.broker, store):
            async def run() -> None:
                stop = asyncio.Event()
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
                await serve(config, lambda bound: print("listening on", *bound,
                                                        flush=True), stop)
            asyncio.run(run())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
