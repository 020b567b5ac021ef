"""CurveZMQ public keys as text (Z85, ZeroMQ RFC 32), checked without loading zmq, so
that the configuration (zchat.config) can check a configured key and the broker core
import it without the sockets (zchat.keys re-exports all of this)."""

from __future__ import annotations

from zchat.errors import ZchatError

#: What ``encryption`` may be set to, in ``[broker]`` and ``[client]``.
ENCRYPTION_MODES = ("curve", "none")
#: A public key's length in Z85: 32 bytes, 5 characters for every 4.
Z85_KEY_CHARS = 40
#: The Z85 alphabet (ZeroMQ RFC 32).
_Z85 = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        ".-:+=^!/*?&<>()[]{}@%$#")
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


class BadKey(ZchatError):
    """A text is not a CurveZMQ public key in Z85 (40 characters of the Z85 alphabet)."""


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
