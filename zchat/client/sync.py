"""``SyncClient``: the asyncio ``Client`` behind blocking calls, for simple scripts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import zmq

from zchat.client.client import Client

T = TypeVar("T")


class SyncClient:
    """A blocking wrapper for scripts: the asyncio Client runs on a private event loop in a
    background thread, so heartbeats keep the session alive between calls.

    Every method of Client is available with the same arguments and errors, blocking;
    ``next_event(timeout_s)`` returns the next event or None.
    """

    def __init__(self, server: str | Sequence[str], *, context: zmq.Context[Any] | None = None,
                 timeout_s: float = 5.0, reconnect: bool = False,
                 reconnect_max_s: float = 30.0, **transport: Any) -> None:
        """``server``: as Client's (one endpoint, or a cluster's several: a sequence or
        one string with commas). ``transport``: Client's ``encryption``, ``server_key``, ``key_server`` and
        ``known_brokers``."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zchat-client",
                                        daemon=True)
        self._thread.start()
        self._timeout_s = timeout_s

        async def make() -> Client:
            return Client(server, context=context, timeout_s=timeout_s, reconnect=reconnect,
                          reconnect_max_s=reconnect_max_s, **transport)

        self.client = self._run(make())
        try:
            self._run(self.client.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if hasattr(self, "client"):
            with contextlib.suppress(Exception):
                self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self.client, attr)
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        return call
