"""The controlling terminal, for the commands that prompt for a password."""

from __future__ import annotations

import os


def has_terminal() -> bool:
    """Whether this process can prompt on its controlling terminal, as getpass does: it
    opens /dev/tty, and without one it would warn and read the password from stdin with
    echo, which we never want."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True
