"""Where the client connects: the PUB endpoint learned from INFO, and a host name looked
up before libzmq is given it (libzmq resolves names by itself, silently and again and
again, so a misspelt host would only show as a broker that does not answer)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from urllib.parse import urlsplit

from zchat.errors import ConnectionFailed
from zchat.keyformat import is_tcp


def pub_endpoint_for(server: str, advertised: str) -> str:
    """The PUB endpoint to connect to: ``advertised`` with a wildcard host (``*``,
    ``0.0.0.0``, ``::``) replaced by the host of ``server``."""
    if not advertised.startswith("tcp://"):
        return advertised
    adv = urlsplit(advertised)
    if adv.hostname not in ("*", "0.0.0.0", "::", "") or not server.startswith("tcp://"):
        return advertised
    host = urlsplit(server).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{adv.port}"


def lookup_host(endpoint: str) -> tuple[str, str] | None:
    """(host, port) of a ``tcp://`` endpoint to connect to whose host is a name to look
    up (``tcp://chat.example.org:5555`` -> ``("chat.example.org", "5555")``; the part
    after a ``;`` when the endpoint names a source first), or None when there is nothing
    to resolve: not tcp, an IP address (``127.0.0.1``, ``[::1]``), ``*``, or no port."""
    if not is_tcp(endpoint):
        return None
    address = endpoint[len("tcp://"):].rpartition(";")[2]
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or host == "*":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, port
    return None


async def resolve_host(endpoint: str, timeout_s: float) -> None:
    """Look up the host name of ``endpoint`` (``lookup_host``) before connecting to it:
    libzmq resolves names by itself, silently and again and again, so a misspelt or
    unknown host would only show as a broker that does not answer within ``timeout_s``.
    Raises ConnectionFailed at once, naming the host, when the name does not resolve, or
    when the lookup takes longer than ``timeout_s`` seconds. Nothing to do (no wait) for
    an IP address, ipc or inproc.

    ``socket.getaddrinfo`` blocks, so it runs on a daemon thread of its own rather than
    the loop's executor, whose threads the interpreter waits for at exit: a resolver that
    hangs must not hold up a command that gave up on it."""
    target = lookup_host(endpoint)
    if target is None:
        return
    host, port = target
    loop = asyncio.get_running_loop()
    done: asyncio.Future[OSError | None] = loop.create_future()

    def settle(result: OSError | None) -> None:
        if not done.done():
            done.set_result(result)

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result: OSError | None = None
        except (OSError, UnicodeError) as exc:  # socket.gaierror; an IDNA-invalid name
            result = exc if isinstance(exc, OSError) else OSError(str(exc))
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=look_up, name="zchat-resolve", daemon=True).start()
    try:
        async with asyncio.timeout(timeout_s):
            failure = await done
    except TimeoutError:
        raise ConnectionFailed(f"the host name {host!r} (in {endpoint}) did not resolve "
                               f"within {timeout_s:g} s; check the address and the "
                               f"network's name service") from None
    if failure is not None:
        raise ConnectionFailed(f"cannot find the host {host!r} (in {endpoint}): "
                               f"{failure.strerror or failure}; check the address")
