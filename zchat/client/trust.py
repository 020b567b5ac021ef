"""Which broker key the client trusts: trust on first use and pinning (docs/PROTOCOL.md
§16.4).

A client needs the broker's public key *before* it can connect. It takes it from
``server_key`` (config or ``--server-key``), else from the pinned-keys file
``$XDG_CONFIG_HOME/zchat/known_brokers.toml`` (keyed by the server endpoint as given),
else — trust on first use, like ssh's ``known_hosts`` — from the broker's plain-text key
service (:func:`fetch_broker_key`), and then pins it there. A key that differs from the
pinned one is refused with :class:`BrokerKeyChanged`, whose message says which file and
line to edit and shows both fingerprints.

Keys are Z85 text at every boundary of this module (zchat.keyformat checks them and makes
their fingerprints); the broker's own key pair is zchat.broker.keypair.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import zmq
import zmq.asyncio

from zchat.client.endpoints import resolve_host
from zchat.config import default_config_path
from zchat.errors import ConnectionFailed, ZchatError
from zchat.files import private_dir, private_file, write_private
from zchat.keyformat import KEY_REPLY, KEY_REQUEST, BadKey, KeyFileError, check_key, fingerprint

#: Name of the pinned-keys file inside the zchat config directory.
KNOWN_BROKERS_FILE = "known_brokers.toml"

_HEADER = """\
# zchat: pinned broker public keys (trust on first use, like ssh's known_hosts).
# One line per broker endpoint, as given to --server / [client] server. When a broker's
# key legitimately changes (its data directory was recreated), delete its line here.
"""


class BrokerKeyChanged(ZchatError):
    """The broker's public key differs from the one pinned or configured for it.

    ``endpoint`` is the server endpoint; ``expected`` and ``actual`` the two keys (Z85);
    ``source`` where the expected key came from (a file path and line, or the setting).
    ``str(error)`` is the multi-line warning shown to the user (:func:`changed_message`).
    """

    def __init__(self, endpoint: str, expected: str, actual: str, source: str,
                 remedy: str) -> None:
        self.endpoint, self.expected, self.actual = endpoint, expected, actual
        self.source = source
        super().__init__(changed_message(endpoint, expected, actual, source, remedy))


@dataclass(frozen=True)
class Pinned:
    """A key pinned just now by trust on first use: shown to the user once."""

    endpoint: str
    key: str
    path: Path

    def notice(self) -> str:
        """The lines telling the user what was trusted (docs/PROTOCOL.md §16.4)."""
        return (f"zchat: first connection to {self.endpoint}: trusting its public key\n"
                f"  {fingerprint(self.key)}\n"
                f"  (pinned in {self.path}; compare it with the fingerprint the broker "
                f"printed at start)")


#: The first line of :func:`changed_message`: it ends up after ``zchat: error: `` (the CLI)
#: or ``session ended: `` (the console), so it must say something on its own.
CHANGED_HEADLINE = "the broker's key has changed — refusing to connect"


def changed_message(endpoint: str, expected: str, actual: str, source: str,
                    remedy: str) -> str:
    """The loud warning for a broker whose key changed (modelled on ssh's "REMOTE HOST
    IDENTIFICATION HAS CHANGED"): a first line that says what happened (CHANGED_HEADLINE;
    it follows ``zchat: error: `` or ``session ended: ``), then the block."""
    bar = "@" * 59
    return "\n".join([
        CHANGED_HEADLINE,
        bar,
        "@    WARNING: BROKER IDENTIFICATION HAS CHANGED!          @",
        bar,
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
        f"The broker at {endpoint} now presents a different public key.",
        "Someone could be eavesdropping on you right now (man-in-the-middle),",
        "or the broker's key pair was recreated (a new data directory).",
        f"  expected {fingerprint(expected)}  ({expected})",
        f"  offered  {fingerprint(actual)}  ({actual})",
        f"The expected key comes from {source}.",
        remedy,
        "Nothing was sent: no password, token or message left this machine.",
    ])


# -- the pinned-keys file -----------------------------------------------------------------


def default_known_brokers_path() -> Path:
    """``$XDG_CONFIG_HOME/zchat/known_brokers.toml`` (default ``~/.config/zchat/…``)."""
    return default_config_path().with_name(KNOWN_BROKERS_FILE)


def load_known_brokers(path: Path) -> dict[str, str]:
    """The pinned keys in ``path``: {server endpoint: Z85 key}; {} if the file is absent.

    Raises KeyFileError when the file cannot be read, is not valid TOML or holds
    something other than a ``[brokers]`` table of endpoint = key strings.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: invalid TOML: {exc}") from None
    brokers = document.get("brokers", {})
    if set(document) - {"brokers"} or not isinstance(brokers, dict):
        raise KeyFileError(f"{path}: expected only a [brokers] table of "
                           f"\"endpoint\" = \"key\" lines")
    for endpoint, key in brokers.items():
        if not isinstance(key, str):
            raise KeyFileError(f"{path}: [brokers] {endpoint!r}: expected a key string")
        try:
            check_key(key, f"[brokers] {endpoint!r}")
        except BadKey as exc:
            raise KeyFileError(f"{path}: {exc}") from None
    return dict(brokers)


def pin_broker_key(path: Path, endpoint: str, key: str) -> None:
    """Add ``endpoint`` = ``key`` to the pinned-keys file (tomli-w), creating it and its
    directory; the file is written atomically with mode 0600. An existing pin for
    ``endpoint`` is never replaced here (the caller checked there is none). Raises
    KeyFileError when the file cannot be read or written.

    The read-modify-write holds an exclusive ``flock`` on ``<path>.lock`` beside it, so
    that clients pinning at the same moment (four started at once against four new
    brokers) each keep their pin; the temporary file has a name unique to this process
    and call, and ``os.replace`` puts it in place whole."""
    import fcntl

    check_key(key)
    try:
        private_dir(path.parent)  # 0700 whatever the umask (zchat/files.py)
        lock = os.open(private_file(path.with_name(path.name + ".lock")), os.O_RDWR)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for milliseconds by another pinning client
        brokers = load_known_brokers(path)
        brokers.setdefault(endpoint, key)
        write_private(path, _HEADER + tomli_w.dumps({"brokers": brokers}))
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(lock)  # releases the lock


def pinned_line(path: Path, endpoint: str) -> int | None:
    """The 1-based line of ``path`` that pins ``endpoint``, or None."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for number, line in enumerate(lines, 1):
        if "=" not in line:
            continue
        try:
            if endpoint in tomllib.loads(line):
                return number
        except tomllib.TOMLDecodeError:
            continue
    return None


# -- the key service (client side) ------------------------------------------------------


async def fetch_broker_key(context: zmq.asyncio.Context, endpoint: str,
                           timeout_s: float) -> str:
    """Ask the broker's key service at ``endpoint`` for its public key (docs/PROTOCOL.md
    §16.3): one plain request ``KEY``, the reply ``zchat-key/1``, ``curve``, key. Returns
    the Z85 key.

    This exchange is unauthenticated by design (trust on first use): its answer is only
    pinned when nothing is pinned yet, or compared with the pin to explain a failed
    handshake. Raises ConnectionFailed when the endpoint's host name does not resolve
    (``resolve_host``) or nothing answers within ``timeout_s`` seconds — worded for the
    usual cause first, a broker that is not running or a wrong address, then the
    transport settings — and BadKey when the answer is not a key.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    await resolve_host(endpoint, timeout_s)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1024)
    try:
        sock.connect(endpoint)
        try:
            async with asyncio.timeout_at(deadline):
                await sock.send(KEY_REQUEST)
                frames: list[Any] = await sock.recv_multipart()
        except TimeoutError:
            raise ConnectionFailed(
                f"the broker does not answer: nothing answered at its key service "
                f"{endpoint} within {timeout_s:g} s (asked for its public key on this "
                f"first connection). Is the broker running, and is the server address "
                f"right? If it runs, it may have encryption = \"none\" (then set "
                f"[client] encryption = \"none\" too) or its key service elsewhere: give "
                f"its key with --server-key or [client] server_key, or set [client] "
                f"key_server") from None
    finally:
        sock.close(linger=0)
    if len(frames) != 3 or frames[0] != KEY_REPLY or frames[1] != b"curve":
        raise BadKey(f"the key service at {endpoint} sent an unexpected reply")
    try:
        return check_key(frames[2].decode("ascii"), f"the key sent by {endpoint}")
    except UnicodeDecodeError:
        raise BadKey(f"the key service at {endpoint} sent a key that is not ASCII") \
            from None
