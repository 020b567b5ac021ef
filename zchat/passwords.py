"""Password hashing with the standard library's memory-hard scrypt (RFC 7914).

Stored form: ``scrypt$N$r$p$<salt base64>$<hash base64>`` with a fresh 16-byte salt per
password, so parameters can be raised later without breaking old hashes. Verification
compares in constant time (hmac.compare_digest). Both functions take tens of milliseconds
by design: the broker runs them off its event loop. Account tokens (random, so a fast
hash suffices) are hashed with SHA-256 by ``token_sha256``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SALT_BYTES = 16
HASH_BYTES = 32


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: scrypt needs 128 * r * n bytes (RFC 7914 §6); leave headroom for p.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * r * n * max(p, 1) + 1024 * 1024, dklen=HASH_BYTES)


def hash_password(password: str, n: int = 16384, r: int = 8, p: int = 1) -> str:
    """Hash ``password`` with a fresh salt; returns the stored form (ASCII)."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(["scrypt", str(n), str(r), str(p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (as made by hash_password). A malformed
    stored value never matches."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        actual = _scrypt(password, salt, int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def token_sha256(token: str) -> str:
    """The stored form of an account token (docs/PROTOCOL.md §6.24): its SHA-256, hex.

    A fast hash is right here, unlike for passwords: a token is 256 random bits from
    ``secrets.token_urlsafe(32)``, so there is no dictionary to try and a stolen hash
    cannot be reversed by guessing; scrypt would only cost the broker time on every login.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def match_token(token: str, stored: list[tuple[int, str]]) -> int | None:
    """The id of the entry of ``stored`` ((id, SHA-256 hex) pairs) whose hash is the
    token's, or None. Every entry is compared, each with hmac.compare_digest, so the time
    taken does not depend on which entry (if any) matched or on how much of it did."""
    digest = token_sha256(token)
    found: int | None = None
    for token_id, expected in stored:
        if hmac.compare_digest(digest, expected):
            found = token_id
    return found
