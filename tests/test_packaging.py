"""Packaging (issue 18): py.typed and the sample settings file in the wheel with the
LICENSE, ``zchat config --defaults``, shell completion generated from the parser (run in
real bash and zsh), and the progress line of long commands (through a pty)."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pexpect
import pytest
from admin_cli_helpers import zchat
from conftest import cli_env, zchat_command

from zchat import cli
from zchat.completion import command_tree
from zchat.config import Config, config_from_dict, load_config, sample_config_text
from zchat.progress import Progress, progress_line

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "zchat" / "data" / "zchat.toml"


# -- what the package holds ----------------------------------------------------------------


def test_pyproject_names_the_package_data_and_the_license() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["package-data"]["zchat"] == [
        "py.typed", "data/zchat.toml"]
    assert project["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "zchat" / "py.typed").is_file() and PACKAGED.is_file()
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")
    assert not (ROOT / "config").exists()  # one sample file, the packaged one


def test_the_wheel_holds_py_typed_the_sample_config_and_the_license(tmp_path: Path) -> None:
    """``pip wheel .`` (as ``pip install .`` builds it): what an installed zchat has."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("zchat-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "zchat/py.typed" in names
        assert z.read("zchat/data/zchat.toml").decode() == PACKAGED.read_text(
            encoding="utf-8")
        assert any(n.endswith(".dist-info/licenses/LICENSE") or
                   n.endswith(".dist-info/LICENSE") for n in names), names


# -- zchat config --------------------------------------------------------------------------


def test_config_defaults_prints_the_packaged_file_equal_to_the_code_defaults(
        tmp_path: Path) -> None:
    broken = tmp_path / "xdg-config" / "zchat" / "zchat.toml"
    broken.parent.mkdir(parents=True)
    broken.write_text("[broker\n")  # the file it cures must not stop it
    result = zchat(tmp_path, "config", "--defaults")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PACKAGED.read_text(encoding="utf-8") == sample_config_text()
    document = tomllib.loads(result.stdout)
    assert config_from_dict(document) == Config()
    saved = tmp_path / "saved.toml"
    saved.write_text(result.stdout, encoding="utf-8")
    assert load_config(saved) == Config()
    assert dataclasses.asdict(Config())["broker"]["router"] == document["broker"]["router"]


def test_config_path_names_the_file_read(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--path", "--config", str(tmp_path / "x.toml")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'x.toml'}\n"
    with pytest.raises(SystemExit) as exited:
        cli.main(["config"])
    assert exited.value.code == 2
    assert "one of the arguments --defaults --path is required" in capsys.readouterr().err


# -- shell completion ----------------------------------------------------------------------


def bash_complete(tmp_path: Path, *words: str) -> list[str]:
    """What bash offers for ``words`` (the last one under the cursor) with the generated
    script sourced: COMP_WORDS/COMP_CWORD as bash's completion sets them."""
    script = tmp_path / "zchat.bash"
    script.write_text(subprocess.run([*zchat_command(), "completion", "bash"],
                                     capture_output=True, text=True, check=True,
                                     timeout=30, env=cli_env(tmp_path)).stdout)
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (f'source {script}\nCOMP_WORDS=({quoted})\nCOMP_CWORD={len(words) - 1}\n'
               'cd "$1"\n_zchat\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash",
                           str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.parametrize(("words", "offered"), [
    (("zchat", "ad"), ["admin"]),
    (("zchat", "say", "--r"), ["--room", "--retry-for"]),
    (("zchat", "say", "--as", "bob", "--r"), ["--room", "--retry-for"]),
    (("zchat", "admin", "cr"), ["create"]),
    (("zchat", "token", "r"), ["revoke"]),
    (("zchat", "broker", "--log-level", "w"), ["warning"]),
    (("zchat", "mod", "--as", "bob", "de"), ["deop", "delete", "delete-room"]),
    (("zchat", "completion", ""), ["bash", "zsh"]),
    (("zchat", "history", "--as", "bob", "--room", "dev", "--li"), ["--limit"]),
])
def test_bash_completes_commands_options_and_choices(tmp_path: Path, words: tuple[str, ...],
                                                     offered: list[str]) -> None:
    assert bash_complete(tmp_path, *words) == offered


def test_bash_completes_file_names_where_a_file_goes(tmp_path: Path) -> None:
    (tmp_path / "echo_bot.py").write_text("")
    assert bash_complete(tmp_path, "zchat", "bot", "echo_") == ["echo_bot.py"]
    assert bash_complete(tmp_path, "zchat", "say", "--config", "echo_") == ["echo_bot.py"]
    assert bash_complete(tmp_path, "zchat", "say", "--room", "ec") == []  # free text


def test_every_subcommand_and_option_is_in_the_tree() -> None:
    tree = {node.path: node for node in command_tree(cli.build_parser())}
    assert set(tree[()].subcommands) == set(cli.COMMANDS)
    assert {"--db", "--csv", "--output", "--as"} <= set(tree[("admin", "create")].options)
    assert tree[("broker",)].choices["--log-level"] == ["debug", "info", "warning", "error"]


@pytest.mark.skipif(shutil.which("zsh") is None,
                    reason="zsh is not installed (Debian: apt-get install zsh)")
def test_zsh_script_parses_registers_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "zchat.zsh"
    script.write_text(cli_text("completion", "zsh"))
    syntax = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True,
                            timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    program = (f'autoload -Uz compinit && compinit -u -D\nsource {script}\n'
               'print -r -- "registered ${_comps[zchat]}"\n'
               't() { local -a _zchat_w; local _zchat_kind _zchat_cands; _zchat_w=("$@");'
               ' _zchat_walk $(( $# - 1 )); print -r -- "$_zchat_kind: $_zchat_cands"; }\n'
               't zchat say --as bob --r\nt zchat broker --log-level ""\nt zchat bot ""\n')
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True,
                          timeout=30, env={**cli_env(tmp_path), "ZDOTDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "registered _zchat"
    assert lines[1].startswith("words: ") and "--room" in lines[1].split()
    assert lines[2] == "words: debug info warning error"
    assert lines[3] == "files: "


def cli_text(*argv: str) -> str:
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, out
    try:
        assert cli.main(list(argv)) == 0
    finally:
        sys.stdout = saved
    return out.getvalue()


# -- the progress line ---------------------------------------------------------------------


def test_progress_line_words() -> None:
    assert progress_line("replay", 12_345, 98_765, "messages", "msg", 3.845) == \
        "replay: 12,345 / 98,765 messages (12%), 3,211 msg/s"
    assert progress_line("admin migrate", 5, None, "rows", "row", 0.0) == \
        "admin migrate: 5 rows"
    assert progress_line("x", 0, 0, "things", "thing", 1.0).startswith("x: 0 / 0 things (100%)")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_redraws_at_most_every_interval_and_ends_the_line() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress("replay", 10, "messages", "msg", stream=out, tty=True, clock=clock)
    for _ in range(5):
        progress.advance()  # no time passes: one drawing, the first
    clock.now += 0.1
    progress.advance()
    clock.now += 0.2
    progress.advance()
    progress.close()
    progress.close()
    drawn = out.getvalue()
    assert drawn.count("\r") == 3 and drawn.endswith("\n") and drawn.count("\n") == 1
    assert drawn.split("\r")[1] == "replay: 1 / 10 messages (10%)\x1b[K"
    assert drawn.split("\r")[-1] == "replay: 7 / 10 messages (70%), 23 msg/s\x1b[K\n"


def test_progress_writes_nothing_off_a_terminal() -> None:
    out = io.StringIO()  # not a tty
    with Progress("replay", 3, "messages", stream=out, clock=FakeClock()) as progress:
        progress.update(3)
    assert out.getvalue() == ""


def test_admin_create_shows_progress_on_a_terminal_and_nothing_on_a_pipe(
        tmp_path: Path) -> None:
    rows = "".join(f"user{i},password{i}\n" for i in range(4))
    (tmp_path / "people.csv").write_text(rows)
    argv = ["admin", "create", "--data-dir", str(tmp_path / "data"), "--csv",
            str(tmp_path / "people.csv")]
    piped = zchat(tmp_path, *argv)
    assert piped.returncode == 0, piped.stderr
    assert "admin create:" not in piped.stderr and "\r" not in piped.stderr
    argv[3] = str(tmp_path / "data2")
    command = [*zchat_command(), *argv]
    child = pexpect.spawn(command[0], command[1:], env=cli_env(tmp_path), timeout=60,
                          encoding="utf-8", dimensions=(24, 100))
    try:
        child.expect_exact("admin create: 4 / 4 accounts (100%)")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
