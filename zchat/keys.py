"""CurveZMQ keys: the broker's key pair, Z85 keys, fingerprints and the pinned-keys file.

Transport security follows docs/PROTOCOL.md §16 (CurveZMQ, RFC 26/CURVEZMQ, with the
ZAP handler of RFC 27/ZAP):

- The broker's long-term key pair lives in its data directory as a ZeroMQ certificate
  (``curve.key_secret``, the format of :mod:`zmq.auth`), mode 0600, created on first
  start and reused after. A secret-key file that others may read is refused, as ssh
  refuses an unprotected private key.
- A client needs the broker's public key *before* it can connect. It takes it from
  ``server_key`` (config or ``--server-key``), else from the pinned-keys file
  ``$XDG_CONFIG_HOME/zchat/known_brokers.toml`` (keyed by the server endpoint as given),
  else — trust on first use, like ssh's ``known_hosts`` — from the broker's plain-text
  key service (:func:`fetch_broker_key`), and then pins it there.
- A key that differs from the pinned one is refused with :class:`BrokerKeyChanged`,
  whose message says which file and line to edit and shows both fingerprints.

Keys are handled as Z85 text (40 ASCII characters for 32 bytes, ZeroMQ RFC 32/Z85) at
every boundary of this module; fingerprints are ``SHA256:`` plus the unpadded base64 of
the SHA-256 of the 32 raw key bytes, the form ``ssh-keygen -l`` prints.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
import stat
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import zmq
import zmq.asyncio
import zmq.auth
import zmq.utils.z85

from zchat.config import default_config_path
from zchat.errors import ConnectionFailed, ZchatError
from zchat.files import private_dir, private_file
from zchat.keyformat import ENCRYPTION_MODES, Z85_KEY_CHARS, BadKey, check_key  # noqa: F401 (re-exported)

#: Name of the broker's certificate (public and secret key) inside its data directory.
BROKER_SECRET_FILE = "curve.key_secret"
#: Name of the broker's public certificate (public key only) beside it.
BROKER_PUBLIC_FILE = "curve.key"
#: Name of the pinned-keys file inside the zchat config directory.
KNOWN_BROKERS_FILE = "known_brokers.toml"
#: The key service's request frame and the first frame of its reply (docs/PROTOCOL.md
#: §16.3). Versioned so that the reply can grow.
KEY_REQUEST = b"KEY"
KEY_REPLY = b"zchat-key/1"
#: Largest frame the key service accepts; a request is 3 bytes, so anything larger is
#: junk and libzmq drops the connection before the broker sees it.
KEY_SERVICE_MAX_FRAME_BYTES = 64
#: The key service's port is the ROUTER's port plus this, unless configured otherwise
#: (5555 -> 5557; the PUB has 5556).
KEY_PORT_OFFSET = 2

log = logging.getLogger(__name__)

_HEADER = """\
# zchat: pinned broker public keys (trust on first use, like ssh's known_hosts).
# One line per broker endpoint, as given to --server / [client] server. When a broker's
# key legitimately changes (its data directory was recreated), delete its line here.
"""


class KeyFileError(ZchatError):
    """A key file cannot be read, written or trusted (bad permissions, bad content)."""


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
class BrokerKeys:
    """The broker's long-term CurveZMQ key pair, both Z85 (40 ASCII bytes)."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print the secret by accident
        return f"BrokerKeys(public={self.public.decode()!r}, secret=<hidden>)"


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


def fingerprint(key: str | bytes) -> str:
    """``SHA256:<base64>`` of a Z85 public key's 32 raw bytes (the ``ssh-keygen -l``
    form). Raises BadKey when ``key`` is not a key."""
    text = key.decode("ascii") if isinstance(key, bytes) else key
    raw = zmq.utils.z85.decode(check_key(text).encode("ascii"))
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


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


# -- the broker's key pair -----------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable only by this user
    (mode 0600 from creation, never wider). Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the umask or the file system widened it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _certificate(public: bytes, secret: bytes | None) -> str:
    """A ZeroMQ certificate in the ZPL text format that zmq.auth.load_certificate reads."""
    lines = ["#   ****  Generated by zchat: ZeroMQ CURVE certificate  ****",
             "#   ZeroMQ CURVE **Secret** Certificate" if secret else
             "#   ZeroMQ CURVE Public Certificate",
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
             if secret else "#   The broker's public key: clients may pin it.",
             "", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def load_or_create_broker_keys(directory: Path) -> tuple[BrokerKeys, bool]:
    """The broker's key pair from ``directory``/curve.key_secret, created (with
    curve.key beside it) when absent. Returns (keys, created).

    A missing curve.key beside an existing secret file is recreated from it (mode 0600,
    logged as a warning). The secret file is created with mode 0600 and refused
    afterwards when group or others may read or write it (like ssh's "UNPROTECTED PRIVATE KEY FILE"). Raises
    KeyFileError when a file cannot be read or written, is not a ZeroMQ certificate, or
    its permissions are too open. The caller holds the data directory's lock, so two
    brokers never create a pair at once.
    """
    secret_path = directory / BROKER_SECRET_FILE
    if not secret_path.exists():
        public, secret = zmq.curve_keypair()
        try:
            _write_private(secret_path, _certificate(public, secret))
            _write_private(directory / BROKER_PUBLIC_FILE, _certificate(public, None))
        except OSError as exc:
            raise KeyFileError(f"cannot write the broker's key pair to {secret_path}: "
                               f"{exc.strerror or exc}") from None
        return BrokerKeys(public, secret), True
    try:
        mode = secret_path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read {secret_path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{secret_path} is accessible by others (mode "
                           f"{stat.S_IMODE(mode):04o}): the broker's secret key must be "
                           f"private; run: chmod 600 {secret_path}")
    try:
        public_b, secret_b = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the broker's key pair from {secret_path}: "
                           f"{exc}") from None
    if not secret_b:
        raise KeyFileError(f"{secret_path} holds no secret-key")
    try:
        check_key(public_b.decode("ascii"), f"public-key in {secret_path}")
        check_key(secret_b.decode("ascii"), f"secret-key in {secret_path}")
    except (UnicodeDecodeError, BadKey) as exc:
        raise KeyFileError(str(exc)) from None
    public_path = directory / BROKER_PUBLIC_FILE
    if not public_path.exists():  # deleted by hand: the secret file holds the public key
        try:
            _write_private(public_path, _certificate(public_b, None))
        except OSError as exc:
            raise KeyFileError(f"cannot write {public_path}: {exc.strerror or exc}") \
                from None
        log.warning("%s was missing: recreated it (mode 0600) from %s", public_path,
                    secret_path)
    return BrokerKeys(public_b, secret_b), False


# -- endpoints ----------------------------------------------------------------------------


def is_tcp(endpoint: str) -> bool:
    """Whether CurveZMQ applies to ``endpoint``: tcp only (inproc and ipc stay plain,
    docs/PROTOCOL.md §16.1)."""
    return endpoint.startswith("tcp://")


def key_endpoint_for(router: str) -> str:
    """The key service's endpoint derived from a ROUTER/server endpoint: the same host
    and the port plus KEY_PORT_OFFSET (``tcp://h:5555`` -> ``tcp://h:5557``); port 0 or
    ``*`` (any free port, for a bind) stays as it is. Raises ValueError for a non-tcp
    endpoint or a port that would pass 65535."""
    if not is_tcp(router):
        raise ValueError(f"no key service for a non-tcp endpoint: {router!r}")
    head, colon, port = router.rpartition(":")
    if not colon or not port:
        raise ValueError(f"no port in {router!r}")
    if port in ("*", "0"):
        return router
    if not port.isdigit() or int(port) + KEY_PORT_OFFSET > 65535:
        raise ValueError(f"cannot derive a key service port from {router!r}; set it "
                         f"explicitly")
    return f"{head}:{int(port) + KEY_PORT_OFFSET}"


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
        _write_private(path, _HEADER + tomli_w.dumps({"brokers": brokers}))
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
