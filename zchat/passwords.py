"""Password hashing: Argon2id (RFC 9106) for new hashes, scrypt (RFC 7914) still checked.

New hashes are Argon2id in the PHC string form argon2-cffi writes,
``$argon2id$v=19$m=<memory KiB>,t=<passes>,p=<lanes>$<salt base64>$<hash base64>``,
with a fresh 16-byte salt and a 32-byte tag. The default parameters are the minimum
configuration of OWASP's Password Storage Cheat Sheet
(https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html:
"Use Argon2id with a minimum configuration of 19 MiB of memory, an iteration count of 2,
and 1 degree of parallelism"): m = 19,456 KiB, t = 2, p = 1.

Hashes written before Argon2id have the form ``scrypt$N$r$p$<salt base64>$<hash base64>``
(:func:`hash_password_scrypt`); they are still verified, with the parameters they carry,
and :func:`check_login` hands back an Argon2id hash to store in their place at the next
successful login. Every hash compares in constant time (argon2's own comparison,
hmac.compare_digest for scrypt). Hashing takes tens of milliseconds by design: the broker
runs it off its event loop (argon2-cffi releases the GIL while it hashes). Account tokens
(random, so a fast hash suffices) are hashed with SHA-256 by ``token_sha256``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

SALT_BYTES = 16
HASH_BYTES = 32

#: OWASP's minimum Argon2id configuration (see the module docstring): memory in KiB
#: (19 MiB), passes over it, lanes. ``[broker] argon2_*`` (zchat.config) default to them.
ARGON2_MEMORY_KIB = 19_456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                 parallelism=parallelism, hash_len=HASH_BYTES,
                                 salt_len=SALT_BYTES, type=argon2.Type.ID)


def hash_password(password: str, memory_kib: int = ARGON2_MEMORY_KIB,
                  time_cost: int = ARGON2_TIME_COST,
                  parallelism: int = ARGON2_PARALLELISM) -> str:
    """Hash ``password`` (UTF-8) with Argon2id and a fresh salt; returns the PHC string
    (ASCII, ``$argon2id$v=19$m=…,t=…,p=…$…$…``). ``memory_kib`` in KiB (>= 8 ×
    ``parallelism``, argon2's own floor), ``time_cost`` passes >= 1, ``parallelism``
    lanes >= 1; argon2.exceptions.HashingError otherwise."""
    return _hasher(memory_kib, time_cost, parallelism).hash(password)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: scrypt needs 128 * r * n bytes (RFC 7914 §6); leave headroom for p.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * r * n * max(p, 1) + 1024 * 1024, dklen=HASH_BYTES)


def hash_password_scrypt(password: str, n: int = 16384, r: int = 8, p: int = 1) -> str:
    """The stored form zchat wrote before Argon2id: ``scrypt$N$r$p$salt$hash`` (base64),
    scrypt with a fresh 16-byte salt. Nothing in zchat writes it any more; it stays so
    that tests and benchmarks can make the hashes that older databases hold."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(["scrypt", str(n), str(r), str(p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def _verify_scrypt(password: str, stored: str) -> bool:
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


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``: an Argon2id PHC string (hash_password;
    its own parameters are used) or an older ``scrypt$…`` hash (hash_password_scrypt). A
    malformed stored value, or one of another scheme (argon2i, argon2d, bcrypt, …),
    never matches."""
    if stored.startswith("$argon2id$"):
        try:
            return _ARGON2_VERIFIER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    return _verify_scrypt(password, stored)


#: Verifies any Argon2id hash: argon2-cffi reads the parameters from the hash itself.
_ARGON2_VERIFIER = _hasher(ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM)


def needs_rehash(stored: str, memory_kib: int, time_cost: int, parallelism: int) -> bool:
    """Whether a hash that just verified should be replaced by a new Argon2id one at
    these parameters: any scrypt (or other non-Argon2id) hash, and an Argon2id hash of an
    older version or with less memory, fewer passes or a shorter salt or tag than
    configured. Unlike argon2-cffi's ``check_needs_rehash``, which asks for a new hash on
    any difference, a hash stronger than the configuration is kept: lowering the settings
    (to save memory on a small machine) must not weaken every stored hash at its next
    login. ``parallelism`` alone never asks for a new hash: lanes change how the work is
    split, not how much there is."""
    del parallelism  # part of the signature so callers pass the configuration whole
    try:
        params = argon2.extract_parameters(stored)
    except InvalidHashError:
        return True
    return (params.type is not argon2.Type.ID or params.version < argon2.low_level.ARGON2_VERSION
            or params.memory_cost < memory_kib or params.time_cost < time_cost
            or params.salt_len < SALT_BYTES or params.hash_len < HASH_BYTES)


@dataclass(frozen=True, slots=True)
class LoginCheck:
    """What :func:`check_login` found: whether the password matched, and, when it did
    and the stored hash is an old form or weaker than configured (:func:`needs_rehash`),
    a new Argon2id hash of it to store in its place (None otherwise)."""

    matched: bool
    rehashed: str | None = None


def check_login(password: str, stored: str, memory_kib: int = ARGON2_MEMORY_KIB,
                time_cost: int = ARGON2_TIME_COST,
                parallelism: int = ARGON2_PARALLELISM) -> LoginCheck:
    """Verify ``password`` against ``stored`` and, on a match with a hash that
    :func:`needs_rehash`, hash it again with Argon2id at these parameters (a second
    hash's time, paid once per account). A wrong password never yields a new hash."""
    if not verify_password(password, stored):
        return LoginCheck(False)
    if not needs_rehash(stored, memory_kib, time_cost, parallelism):
        return LoginCheck(True)
    return LoginCheck(True, hash_password(password, memory_kib, time_cost, parallelism))


def token_sha256(token: str) -> str:
    """The stored form of an account token (docs/PROTOCOL.md §6.24): its SHA-256, hex.

    A fast hash is right here, unlike for passwords: a token is 256 random bits from
    ``secrets.token_urlsafe(32)``, so there is no dictionary to try and a stolen hash
    cannot be reversed by guessing; Argon2id would only cost the broker time on every
    login.
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
