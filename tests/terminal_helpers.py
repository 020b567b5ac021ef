"""The real ``zchat join`` console in a pseudo-terminal (pexpect), its output fed into a
terminal emulator (pyte), for the end-to-end console tests: ``Terminal`` of COLS x ROWS
waits until the screen shows what is expected, with a deadline; ``screen_on_failure``
adds the final screen to a failed assertion; ``console_env`` is the environment of the
console subprocess.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
from conftest import cli_env, zchat_command

COLS, ROWS = 100, 30


class Terminal:
    """A process in a pseudo-terminal of COLS x ROWS whose output drives a pyte screen.
    The screen answers cursor-position requests like a real terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        argv = [*zchat_command(), *args]
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(ROWS, COLS))
        self.screen = pyte.Screen(COLS, ROWS)
        self.screen.write_process_input = self._answer  # type: ignore[method-assign]
        self.stream = pyte.ByteStream(self.screen)

    def _answer(self, data: str) -> None:
        self.child.send(data.encode())

    def read(self, timeout_s: float) -> bool:
        """Feed what the process wrote within ``timeout_s`` to the screen; False at EOF."""
        try:
            self.stream.feed(self.child.read_nonblocking(65536, timeout_s))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            return False
        return True

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, condition: Callable[[str], bool], what: str,
                 timeout_s: float = 10.0) -> str:
        """Read until ``condition(screen text)`` holds; return the screen text."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if condition(text):
                return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            if not self.read(min(left, 0.1)):
                if condition(self.text()):
                    return self.text()
                raise AssertionError(f"the process ended while waiting for {what}")

    def wait_shows(self, needle: str, timeout_s: float = 10.0) -> str:
        return self.wait_for(lambda text: needle in text, repr(needle), timeout_s)

    def wait_exit(self, timeout_s: float) -> int:
        """Exit status, reading output until the process has ended."""
        deadline = time.monotonic() + timeout_s
        while self.read(0.1):
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s} s")
        self.child.close()
        assert self.child.exitstatus is not None, f"killed by {self.child.signalstatus}"
        return int(self.child.exitstatus)

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@contextlib.contextmanager
def screen_on_failure(term: Terminal) -> Iterator[None]:
    """Add the final screen to any assertion that fails inside, for debugging."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- screen ---\n{term.text()}") from None
    finally:
        term.kill()


def console_env(tmp_path: Path, password: bool = True) -> dict[str, str]:
    env = cli_env(tmp_path)
    env["TERM"] = "xterm-256color"
    if not password:
        del env["ZCHAT_PASSWORD"]
    return env
