"""The suite's own hygiene: a test that leaves a process running fails and the process is
killed (tests/processes.py), no test writes into the real home of whoever runs the
suite (``private_homes`` in tests/conftest.py), and no module of the suite imports a test
file (helpers shared by tests live in helper modules or in conftest.py), no test file is
named after an issue, and the package's imports run one way (no cycle; ``zchat.core``,
``zchat.wire`` and the client's session module load no I/O)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from conftest import REAL_HOMES, cli_env
from processes import command_line, process_table

TESTS = Path(__file__).resolve().parent

#: Tests run by an inner pytest with the leak check (``-p processes``). Each leftover is
#: ``python -c "signal.pause()"`` (it waits for a signal for ever) tagged in its argv with
#: $HYGIENE_TAG, so that the outer test can look for it by command line afterwards.
INNER_TESTS = '''
import os
import subprocess
import sys

PAUSE = [sys.executable, "-c", "import signal; signal.pause()"]
TAG = os.environ["HYGIENE_TAG"]


def test_clean():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_leaves_a_child():
    subprocess.Popen([*PAUSE, "left-child", TAG])


def test_leaves_an_orphan():
    # The middle process starts it in a session of its own and exits at once: it is
    # reparented to init, no longer a descendant of this process; only its marker names it.
    starter = ("import subprocess, sys; subprocess.Popen(sys.argv[1:], "
               "start_new_session=True)")
    subprocess.run([sys.executable, "-c", starter, *PAUSE, "left-orphan", TAG], check=True)


def test_a_child_ending_after_its_test_is_no_leak():
    subprocess.Popen([*PAUSE, "ending", TAG]).terminate()  # ends within the grace
'''


def test_a_test_that_leaves_a_process_fails_and_the_process_is_killed(tmp_path: Path) -> None:
    """An inner pytest with the leak check: the two tests that leave a process (a child,
    and an orphan reparented to init) each fail at teardown naming its command line, the
    clean test and the one whose child is still ending pass, and nothing is left."""
    tag = f"hygiene-{secrets.token_hex(8)}"
    (tmp_path / "test_inner.py").write_text(INNER_TESTS, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HYGIENE_TAG": tag,
           "ZCHAT_TEST_LEFTOVER_GRACE_S": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "processes", "-p", "no:cacheprovider",
         "-q", "-p", "no:randomly", "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "4 passed, 2 errors" in out, out
    for test, what in (("test_leaves_a_child", "left-child"),
                       ("test_leaves_an_orphan", "left-orphan")):
        # from the line after its "___ ERROR at teardown of TEST ___" to the next heading
        body = out.split(f"ERROR at teardown of {test} ", 1)[1].split("\n", 1)[1]
        section = re.split(r"\n(?:___|===)", body, maxsplit=1)[0]
        assert "the test left 1 process(es) running (SIGKILLed after 1 s)" in section, out
        assert f"import signal; signal.pause() {what} {tag}" in section, out
    assert "ending" not in out
    assert [command_line(pid) for pid in process_table() if tag in command_line(pid)] == []


def test_a_test_and_its_subprocesses_get_private_homes(tmp_path: Path) -> None:
    """HOME and every XDG base directory zchat or a library could write to point inside
    the test's tmp_path, in this process and in ``cli_env``'s subprocess environment."""
    names = ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
             "XDG_RUNTIME_DIR")
    env = cli_env(tmp_path)
    for name in names:
        assert Path(os.environ[name]).is_relative_to(tmp_path), name
        assert env[name] == os.environ[name]
    assert Path.home().is_relative_to(tmp_path)
    assert Path(os.environ["XDG_RUNTIME_DIR"]).stat().st_mode & 0o777 == 0o700


def test_the_console_log_stays_in_the_tests_state_home(tmp_path: Path) -> None:
    """The console's log file (``zchat join`` sets it up with ``_log_to_file``) written by
    a subprocess with ``cli_env``: in the test's $XDG_STATE_HOME, or with that unset in the
    test's ~/.local/state; never in the real state home of whoever runs the suite."""
    log_a_line = ("import logging, sys; from zchat.cli import _log_to_file; _log_to_file(); "
                  "logging.getLogger('zchat.console').warning(sys.argv[1])")
    marker = f"hygiene {secrets.token_hex(8)}"
    subprocess.run([sys.executable, "-c", log_a_line, f"{marker} xdg"], env=cli_env(tmp_path),
                   check=True, timeout=60)
    without_xdg = {k: v for k, v in cli_env(tmp_path).items() if k != "XDG_STATE_HOME"}
    subprocess.run([sys.executable, "-c", log_a_line, f"{marker} home"], env=without_xdg,
                   check=True, timeout=60)
    assert f"{marker} xdg" in (tmp_path / "xdg-state/zchat/console.log").read_text()
    assert f"{marker} home" in (tmp_path / "home/.local/state/zchat/console.log").read_text()
    real = [Path(REAL_HOMES["HOME"] or "/nonexistent") / ".local/state/zchat/console.log"]
    if REAL_HOMES["XDG_STATE_HOME"].startswith("/"):
        real.append(Path(REAL_HOMES["XDG_STATE_HOME"]) / "zchat/console.log")
    for path in real:
        if path.exists():
            assert marker not in path.read_text(errors="replace"), path


#: Calls that load a module by name or by path: a string argument naming a test file in
#: one of them is an import too (``importlib.import_module("test_codec")``, a spec from
#: ``ROOT / "tests" / "test_codec.py"``).
LOADERS = {"import_module", "__import__", "spec_from_file_location", "SourceFileLoader",
           "run_path", "run_module"}


def imported_test_modules(source: str, test_modules: set[str]) -> list[tuple[int, str]]:
    """(line, module) for each import of one of ``test_modules`` in ``source``: ``import``
    and ``from … import`` statements anywhere (in a function too, relative ones included),
    and the names or paths given to the LOADERS."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.module else [alias.name for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in LOADERS:
                names = [part.value for arg in [*node.args, *node.keywords]
                         for part in ast.walk(arg)
                         if isinstance(part, ast.Constant) and isinstance(part.value, str)]
        for name in names:
            # "test_codec", "tests.test_codec.x", "tests/test_codec.py", "test_codec.py"
            stem = name.removesuffix(".py").replace("/", ".").split(".")
            hits = [part for part in stem if part in test_modules]
            if hits:
                found.append((node.lineno, hits[0]))
    return found


def test_no_module_of_the_suite_imports_a_test_file() -> None:
    """A test file imports nothing from another test file: what tests share lives in a
    helpers module named for what it holds (tests/core_helpers.py, console_helpers.py,
    client_helpers.py, cli_helpers.py, …) or, for a fixture used widely, in conftest.py
    (issue 15). Helper modules and conftest.py import no test file either. Reaching into
    a test file for a helper ties the two files together (renaming or splitting one breaks
    the other) and hides what is shared; loading one by path runs its module code again."""
    test_modules = {path.stem for path in TESTS.glob("test_*.py")}
    assert {"test_broker_core", "test_codec", "test_hygiene"} <= test_modules
    # the check itself sees each way of importing a test file
    ways = ["from test_codec import ROUND_TRIPPED", "import test_codec",
            "def f():\n    from test_codec import ROUND_TRIPPED",
            "from . import test_codec", "from .test_codec import x",
            "importlib.import_module('test_codec')",
            "spec_from_file_location('x', ROOT / 'tests' / 'test_codec.py')"]
    for source in ways:
        assert imported_test_modules(source, test_modules) == [
            (source.count("\n") + 1, "test_codec")], source
    assert imported_test_modules("from core_helpers import World\nimport test_data\n"
                                 "spec_from_file_location('x', 'examples/greeter.py')",
                                 test_modules) == []
    offenders = [f"{path.name}:{line} imports {module}"
                 for path in sorted(TESTS.glob("*.py"))
                 for line, module in imported_test_modules(path.read_text(encoding="utf-8"),
                                                           test_modules - {path.stem})]
    assert offenders == [], "move what they share into a helpers module or conftest.py"



#: A test file's name that cites where a test came from rather than what it tests: an
#: issue or pull request ("test_issue15.py", "test_issue_15_x.py", "test_gh_12.py",
#: "test_pr7.py"), a bug or a regression, a review's "holes", or a bare number.
NAMED_AFTER_AN_ISSUE = re.compile(
    r"(?:^|_)(?:issues?|gh|pr|bugs?|regressions?|holes?|fix(?:es)?|round)(?:_?\d+)?(?:_|$)"
    r"|(?:^|_)\d+(?:_|$)")


def named_after_an_issue(stem: str) -> bool:
    """Whether test file ``stem`` (``test_…`` without ``.py``) is named after an issue."""
    return NAMED_AFTER_AN_ISSUE.search(stem.removeprefix("test_")) is not None


def test_no_test_file_is_named_after_an_issue() -> None:
    """A test file is named for what it tests (test_room_feed.py, test_admin_refusals.py),
    never for the issue, bug or review round it came from (issue 15): a name like
    test_issue_6.py says nothing to the reader and hides where a test of a feature lives.
    Cite the issue in the docstring instead."""
    for bad in ("test_issue15", "test_issue_15", "test_issues_3_and_4", "test_gh_12",
                "test_pr7_login", "test_bug_42", "test_regression", "test_admin_holes",
                "test_6", "test_login_12"):
        assert named_after_an_issue(bad), bad
    for good in ("test_e2e_cli", "test_room_feed", "test_pub_subscribers", "test_hygiene",
                 "test_prefix_match", "test_fixture_order", "test_bugle", "test_holdings"):
        assert not named_after_an_issue(good), good
    offenders = sorted(path.name for path in TESTS.glob("test_*.py")
                       if named_after_an_issue(path.stem))
    assert offenders == [], "rename them to what they test"

# -- the package's imports ------------------------------------------------------------------

ZCHAT = TESTS.parent / "zchat"


def _zchat_imports() -> dict[str, set[str]]:
    """Module -> the zchat modules it imports, anywhere in it (function-level imports
    too: they hide a cycle rather than remove it). ``from zchat.core import wording``
    counts as importing zchat.core.wording; ``from zchat.core import BrokerCore`` as
    importing zchat.core."""
    modules: dict[str, Path] = {}
    for path in ZCHAT.rglob("*.py"):
        parts = list(path.relative_to(ZCHAT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_zchat_has_no_import_cycle() -> None:
    """Imports inside zchat/ run one way (applications -> broker/client -> core -> wire
    and ports; adapters -> ports): no two modules import each other, directly or
    around a loop, at module level or inside a function."""
    graph = _zchat_imports()
    assert {"zchat.core.facade", "zchat.store.sqlite", "zchat.cli"} <= set(graph)
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself: a loop of three is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_importing_the_core_loads_no_sockets_database_event_loop_or_cli() -> None:
    """The broker core is pure: ``import zchat.core`` (every module of it) in a fresh
    interpreter loads neither zmq, sqlite3, asyncio nor argparse."""
    core_modules = sorted(m for m in _zchat_imports() if m.startswith("zchat.core"))
    assert len(core_modules) > 10
    assert _loaded_by(core_modules, ("zmq", "sqlite3", "asyncio", "argparse")) == []


def _loaded_by(modules: list[str], unwanted: tuple[str, ...]) -> list[str]:
    """The ``unwanted`` modules that importing ``modules`` in a fresh interpreter loads."""
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in {unwanted!r} if m in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_importing_the_wire_loads_no_sockets_database_or_event_loop() -> None:
    """The wire is pure too: ``import zchat.wire`` (every module of it) in a fresh
    interpreter loads neither zmq, sqlite3 nor asyncio, so the client, the broker and
    tools share it without dragging I/O in."""
    wire_modules = sorted(m for m in _zchat_imports() if m.startswith("zchat.wire"))
    assert len(wire_modules) > 5
    assert _loaded_by(wire_modules, ("zmq", "sqlite3", "asyncio")) == []


#: What the client's pure session module may not import itself: sockets, an event loop,
#: threads, the clock or randomness (time and jitter come in as arguments).
SESSION_FORBIDDEN_IMPORTS = {"zmq", "asyncio", "socket", "selectors", "ssl", "threading",
                             "time", "random", "sqlite3"}


def test_importing_the_client_session_loads_no_sockets_or_event_loop() -> None:
    """The client's decisions are pure (zchat/client/session.py, and the events it is
    told about, zchat/client/events.py): importing them in a fresh interpreter loads
    neither zmq, asyncio, sqlite3 nor any zchat module that opens a socket (the asyncio
    client, the key trust, the endpoints' look-up, the broker). The stdlib ``socket`` is
    not in that list: ``zchat.names`` uses the confusable-homoglyphs package, which
    imports ``urllib.request`` for its own data updater; so the session module's own
    imports are checked as well (below), and it imports no socket, clock or event loop."""
    modules = ["zchat.client.session", "zchat.client.events"]
    io_modules = sorted(m for m in _zchat_imports()
                        if m.startswith("zchat.broker")
                        or m in ("zchat.client.client", "zchat.client.sync",
                                 "zchat.client.trust", "zchat.client.endpoints"))
    assert "zchat.broker.loop" in io_modules and "zchat.client.client" in io_modules
    assert _loaded_by(modules, ("zmq", "asyncio", "sqlite3", *io_modules)) == []
    for name in modules:
        path = ZCHAT.parent / (name.replace(".", "/") + ".py")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert imported & SESSION_FORBIDDEN_IMPORTS == set(), name


def test_the_client_package_re_exports_its_public_api_lazily() -> None:
    """``from zchat.client import Client, SyncClient, ConnectionLost …`` works for users
    as it did when zchat/client.py was one module, each name being the one its module
    defines; ``import zchat.client`` alone loads no zmq (the names load at first use)."""
    import zchat.client
    from zchat.client import client, events, session, sync, trust

    assert sorted(zchat.client.__all__) == sorted(zchat.client._PUBLIC)
    for name, module in zchat.client._PUBLIC.items():
        assert getattr(zchat.client, name) is getattr(importlib.import_module(module), name)
    assert zchat.client.Client is client.Client
    assert zchat.client.SyncClient is sync.SyncClient
    assert zchat.client.ConnectionLost is events.ConnectionLost
    assert zchat.client.Unread is session.Unread
    assert zchat.client.BrokerKeyChanged is trust.BrokerKeyChanged
    assert _loaded_by(["zchat.client"], ("zmq", "asyncio")) == []


def test_imports_of_the_former_modules_keep_working() -> None:
    """Code written before the reshape imports the wire's values from ``zchat.protocol``
    and the client's errors from ``zchat.client``: both keep working (the first with a
    DeprecationWarning naming ``zchat.wire``)."""
    import importlib
    import sys

    import pytest

    import zchat.wire

    sys.modules.pop("zchat.protocol", None)
    with pytest.warns(DeprecationWarning, match="zchat.wire"):
        protocol = importlib.import_module("zchat.protocol")
    assert protocol.MessagePosted is zchat.wire.MessagePosted
    assert sorted(protocol.__all__) == sorted(zchat.wire.__all__)
    from zchat.client import ConnectionFailed, RequestFailed, Status
    from zchat.errors import ConnectionFailed as Failed
    from zchat.errors import RequestFailed as Refused

    assert (ConnectionFailed, RequestFailed, Status.UNAVAILABLE) == (Failed, Refused, 503)
