"""Private files on the client side (docs/security.md, "Files on the client"): the
directories zchat creates are 0700 and its files 0600, whatever the umask.

The rule, as ssh's ~/.ssh: what zchat creates is made private from the start (created
with the mode, then set to it exactly, since a umask only narrows). What already exists
is narrowed only when it is zchat's own — the ``zchat`` directory and the files in it
that zchat writes — and belongs to this user; a directory above it (``~/.config``,
``$XDG_STATE_HOME``) is shared with other programs and is left as it is, as is anything
owned by someone else.

``write_private`` writes such a file whole (the pinned-keys file, zchat.client.trust), and
the broker's key pair with it (zchat.broker.keypair).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _narrow(path: Path) -> None:
    """Take group's and others' bits off ``path`` when this user owns it (0755 -> 0700,
    0644 -> 0600). Raises OSError."""
    st = path.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def private_dir(path: Path) -> Path:
    """Make the directory ``path`` and its missing parents, each 0700; narrow ``path``
    itself to 0700 if it existed and group or others could use it. Returns ``path``.
    Raises OSError."""
    missing: list[Path] = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another zchat: narrowed below if ours
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)  # ours, just made: exactly 0700
    _narrow(path)
    return path


def private_file(path: Path) -> Path:
    """Make the file ``path`` (empty) mode 0600 if it is missing, or narrow it to 0600
    if it exists and group or others could read it; its directory must exist. Returns
    ``path``, ready to be opened for appending (e.g. by ``logging.FileHandler``). Raises
    OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    with contextlib.closing(os.fdopen(fd, "ab")):
        _narrow(path)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable only by this user
    (mode 0600 from creation, never wider): a temporary file beside it, unique to this
    process, fsynced, then ``os.replace``. Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PRIVATE_FILE_MODE)  # in case the umask or the file system widened it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
