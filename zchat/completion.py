"""Shell completion for ``zchat``, generated from its argparse parser (``zchat completion
bash|zsh``): subcommands, their options, and the values of options and positionals that
have choices (``--log-level``, ``zchat mod ACTION``) or are files (``--config FILE``).

:func:`command_tree` walks the parser (pure); :func:`bash_script` and :func:`zsh_script`
render the tree as a script to source: ``eval "$(zchat completion bash)"`` in
``~/.bashrc`` (bash 4 or later: associative arrays), ``eval "$(zchat completion zsh)"``
in ``~/.zshrc`` after ``compinit``. Both scripts hold the tree as data and one small
function that finds the command path in the words typed so far (skipping options and
their values) and offers what fits the word under the cursor.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELLS = ("bash", "zsh")

#: What a word of the tree may be: option strings, subcommand names and choices are
#: plain tokens, so the scripts need no quoting beyond shlex.quote of whole lists.
_TOKEN = re.compile(r"[A-Za-z0-9_.:@+-]+")


@dataclass
class CommandNode:
    """One (sub)command: ``path`` is its words after ``zchat`` (``("admin", "create")``)."""

    path: tuple[str, ...]
    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    #: option strings that take a value (the next word)
    valued: list[str] = field(default_factory=list)
    #: option string -> its choices
    choices: dict[str, list[str]] = field(default_factory=dict)
    #: option strings whose value is a file (type=Path)
    files: list[str] = field(default_factory=list)
    #: per positional, in order: its choices, ["<file>"] for a file, or [] for free text
    positionals: list[list[str]] = field(default_factory=list)


FILE = "<file>"


def command_tree(parser: argparse.ArgumentParser) -> list[CommandNode]:
    """Every command of ``parser``, the root (path ``()``) first, then depth first."""
    nodes: list[CommandNode] = []

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        node = CommandNode(path)
        nodes.append(node)
        children: list[tuple[str, argparse.ArgumentParser]] = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    node.subcommands.append(name)
                    children.append((name, child))
                continue
            choices = [str(c) for c in action.choices] if action.choices else []
            is_file = action.type is Path
            if action.option_strings:
                node.options += action.option_strings
                if action.nargs != 0:
                    node.valued += action.option_strings
                    for option in action.option_strings:
                        if choices:
                            node.choices[option] = choices
                        elif is_file:
                            node.files.append(option)
            else:
                node.positionals.append(choices or ([FILE] if is_file else []))
        for name, child in children:
            walk(child, (*path, name))

    walk(parser, ())
    for node in nodes:
        words = [*node.path, *node.subcommands, *node.options,
                 *(c for cs in node.choices.values() for c in cs),
                 *(c for cs in node.positionals for c in cs if c != FILE)]
        bad = [w for w in words if not _TOKEN.fullmatch(w)]
        if bad:  # pragma: no cover - a parser change would show here, in the tests
            raise ValueError(f"completion: not a plain word: {bad[0]!r}")
    return nodes


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def _data(nodes: list[CommandNode], assoc: str) -> str:
    """The tree as shell associative-array assignments (bash ``declare -A``, zsh
    ``typeset -A``), keyed by ``zchat`` and the command path joined with '/' (bash
    refuses an empty key; zsh would keep quotes in a key, so keys are plain words);
    choices by ``PATH/OPTION`` and ``PATH/@N`` (N-th positional, from 0)."""
    lines = [f"{assoc} _zchat_subs _zchat_opts _zchat_valued _zchat_choices _zchat_files"]
    for node in nodes:
        key = name = "/".join(("zchat", *node.path))
        lines.append(f"_zchat_subs[{key}]={_words(node.subcommands)}")
        lines.append(f"_zchat_opts[{key}]={_words(node.options)}")
        lines.append(f"_zchat_valued[{key}]={_words(node.valued)}")
        for option, choices in node.choices.items():
            lines.append(f"_zchat_choices[{name + '/' + option}]"
                         f"={_words(choices)}")
        for option in node.files:
            lines.append(f"_zchat_files[{name + '/' + option}]=1")
        for i, values in enumerate(node.positionals):
            where = f"{name}/@{i}"
            if values == [FILE]:
                lines.append(f"_zchat_files[{where}]=1")
            elif values:
                lines.append(f"_zchat_choices[{where}]={_words(values)}")
    return "\n".join(lines)


# The shared walk, in the common subset of bash and zsh: $1 is the index of the word under
# the cursor, the words are in the array _zchat_w (0-based: _zchat_w[0] is "zchat"; zsh
# gets KSH_ARRAYS locally). It sets _zchat_kind (words|files|none) and _zchat_cands.
_WALK = r'''
_zchat_walk() {
    local cword=$1 path=zchat word npos=0 i=1 key
    _zchat_kind=none _zchat_cands=""
    while (( i < cword )); do
        word=${_zchat_w[i]}
        if [[ $word == -* && $word != *=* ]]; then
            if [[ " ${_zchat_valued[$path]} " == *" $word "* ]]; then
                if (( i + 1 == cword )); then  # the word under the cursor is its value
                    key="$path/$word"
                    if [[ -n ${_zchat_choices[$key]} ]]; then
                        _zchat_kind=words _zchat_cands=${_zchat_choices[$key]}
                    elif [[ -n ${_zchat_files[$key]} ]]; then
                        _zchat_kind=files
                    fi
                    return 0
                fi
                (( i++ ))
            fi
        elif [[ $word != -* && " ${_zchat_subs[$path]} " == *" $word "* ]]; then
            path="$path/$word"
            npos=0
        elif [[ $word != -* ]]; then
            (( npos++ ))
        fi
        (( i++ ))
    done
    word=${_zchat_w[cword]}
    if [[ $word == -* ]]; then
        _zchat_kind=words _zchat_cands=${_zchat_opts[$path]}
    elif [[ -n ${_zchat_subs[$path]} ]]; then
        _zchat_kind=words _zchat_cands=${_zchat_subs[$path]}
    elif [[ -n ${_zchat_choices[$path/@$npos]} ]]; then
        _zchat_kind=words _zchat_cands=${_zchat_choices[$path/@$npos]}
    elif [[ -n ${_zchat_files[$path/@$npos]} ]]; then
        _zchat_kind=files
    elif [[ -z $word ]]; then
        _zchat_kind=words _zchat_cands=${_zchat_opts[$path]}
    fi
    return 0
}
'''


_ZSH_WALK = _WALK.replace("_zchat_walk() {",
                          "_zchat_walk() {\n    setopt local_options ksh_arrays")


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash (4+) script defining ``_zchat`` and registering it for ``zchat``."""
    return f'''# zchat completion for bash (4 or later), generated by `zchat completion bash`.
# In ~/.bashrc:  eval "$(zchat completion bash)"
{_data(command_tree(parser), "declare -gA")}
{_WALK}
_zchat() {{
    local _zchat_w=("${{COMP_WORDS[@]}}") _zchat_kind _zchat_cands
    local cur=${{COMP_WORDS[COMP_CWORD]}}
    _zchat_walk "$COMP_CWORD"
    COMPREPLY=()
    if [[ $_zchat_kind == words ]]; then
        COMPREPLY=($(compgen -W "$_zchat_cands" -- "$cur"))
    elif [[ $_zchat_kind == files ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _zchat zchat
'''


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """A zsh script defining ``_zchat`` and registering it with ``compdef`` (compinit
    must have run)."""
    return f'''# zchat completion for zsh, generated by `zchat completion zsh`.
# In ~/.zshrc, after compinit:  eval "$(zchat completion zsh)"
{_data(command_tree(parser), "typeset -gA")}
{_ZSH_WALK}
_zchat() {{
    local -a _zchat_w
    local _zchat_kind _zchat_cands
    _zchat_w=("${{words[@]}}")
    _zchat_walk $(( CURRENT - 1 ))
    if [[ $_zchat_kind == words ]]; then
        compadd -- ${{=_zchat_cands}}
    elif [[ $_zchat_kind == files ]]; then
        _files
    fi
}}
(( $+functions[compdef] )) && compdef _zchat zchat
'''


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (one of SHELLS)."""
    return bash_script(parser) if shell == "bash" else zsh_script(parser)
