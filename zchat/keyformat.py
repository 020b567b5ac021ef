"""What the broker's side and the client's side of CurveZMQ share, without loading zmq:
public keys as text (Z85, ZeroMQ RFC 32) and their fingerprints, the key service's frames
and where it listens, and the key files' error. The configuration (zchat.config) checks a
configured key with it; the broker's key pair (zchat.broker.keypair) and the client's key
pinning (zchat.client.trust) both build on it, and neither imports the other.

Fingerprints are ``SHA256:`` plus the unpadded base64 of the SHA-256 of the 32 raw key
bytes, the form ``ssh-keygen -l`` prints (docs/PROTOCOL.md §16.4).
"""

from __future__ import annotations

import base64
import hashlib

from zchat.errors import ZchatError

#: What ``encryption`` may be set to, in ``[broker]`` and ``[client]``.
ENCRYPTION_MODES = ("curve", "none")
#: A public key's length in Z85: 32 bytes, 5 characters for every 4.
Z85_KEY_CHARS = 40
#: The Z85 alphabet (ZeroMQ RFC 32).
_Z85 = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        ".-:+=^!/*?&<>()[]{}@%$#")
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


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


class BadKey(ZchatError):
    """A text is not a CurveZMQ public key in Z85 (40 characters of the Z85 alphabet)."""


class KeyFileError(ZchatError):
    """A key file cannot be read, written or trusted (bad permissions, bad content)."""


def z85_decode(text: str) -> bytes:
    """The bytes of Z85 ``text`` (a multiple of 5 characters). Raises ValueError for
    another length, a character outside the alphabet or a group beyond 32 bits."""
    if len(text) % 5:
        raise ValueError("Z85 text must be a multiple of 5 characters")
    out = bytearray()
    for start in range(0, len(text), 5):
        value = 0
        for ch in text[start:start + 5]:
            digit = _Z85_VALUE.get(ch)
            if digit is None:
                raise ValueError(f"not a Z85 character: {ch!r}")
            value = value * 85 + digit
        if value > 0xFFFFFFFF:
            raise ValueError("Z85 group beyond 32 bits")
        out += value.to_bytes(4, "big")
    return bytes(out)


def check_key(text: str, what: str = "key") -> str:
    """Return ``text`` if it is a Z85 CurveZMQ public key (40 characters decoding to 32
    bytes); raise BadKey naming ``what`` otherwise."""
    if not isinstance(text, str) or len(text) != Z85_KEY_CHARS:
        size = len(text) if isinstance(text, str) else "?"
        raise BadKey(f"{what} must be {Z85_KEY_CHARS} characters of Z85 (as printed by "
                     f"'zchat broker'), got {size}")
    try:
        raw = z85_decode(text)
    except ValueError:
        raise BadKey(f"{what} is not Z85 text (as printed by 'zchat broker')") from None
    if len(raw) != 32:
        raise BadKey(f"{what} does not decode to 32 bytes")
    return text


def fingerprint(key: str | bytes) -> str:
    """``SHA256:<base64>`` of a Z85 public key's 32 raw bytes (the ``ssh-keygen -l``
    form). Raises BadKey when ``key`` is not a key."""
    text = key.decode("ascii") if isinstance(key, bytes) else key
    raw = z85_decode(check_key(text))
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


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
