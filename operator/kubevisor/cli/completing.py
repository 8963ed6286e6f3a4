"""``kubevisor completion bash|zsh``: a shell completion script made from the argparse parser.

Why generated from the parser: the verbs and flags are written once (``main.parser``); a
hand-written script would drift from them. The script completes verbs, each verb's flags,
the choices of flags that have them (``-o``, ``--mode``), and VirtualMachine names for the
verbs that take one, by asking the cluster (``kubevisor list -o name``). zsh runs the same
script through ``bashcompinit``.

Install: ``source <(kubevisor completion bash)`` (or zsh) in the shell's rc file; the
script registers both ``kubevisor`` and ``kubectl-kubevisor``.
"""

from __future__ import annotations

import argparse
import shlex

#: Verbs whose first positional argument is a VirtualMachine name.
VM_VERBS = frozenset(
    {"get", "start", "stop", "restart", "pause", "unpause", "console", "vnc", "migrate", "backup"}
)
SHELLS = ("bash", "zsh")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    """A parser's option strings, and the choices of those that have any."""
    flags: list[str] = []
    choices: dict[str, list[str]] = {}
    for action in parser._actions:
        flags.extend(action.option_strings)
        if action.option_strings and action.choices:
            for opt in action.option_strings:
                choices[opt] = [str(c) for c in action.choices]
    return flags, choices


def bash(parser: argparse.ArgumentParser, *, prog: str = "kubevisor") -> str:
    """The bash completion script for ``parser`` (pure)."""
    verbs = _subcommands(parser)
    top_flags, _ = _flags(parser)
    cases: list[str] = []
    for verb, sub in sorted(verbs.items()):
        flags, choices = _flags(sub)
        nested = sorted(_subcommands(sub))
        lines = [f"        {shlex.quote(verb)})"]
        for opt, values in sorted(choices.items()):
            lines.append(
                f'            if [[ "$prev" == {shlex.quote(opt)} ]]; then'
                f' COMPREPLY=($(compgen -W {shlex.quote(" ".join(values))} -- "$cur"));'
                " return; fi"
            )
        words = " ".join(sorted(flags) + nested)
        lines.append(
            f'            if [[ "$cur" == -* || -n {shlex.quote(" ".join(nested))} ]]; then'
            f' COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur")); return; fi'
        )
        if verb in VM_VERBS:
            lines.append(
                f'            COMPREPLY=($(compgen -W "$({prog} list -o name $ns 2>/dev/null'
                ' | sed "s|.*/||")" -- "$cur")); return'
            )
        lines.append("            ;;")
        cases.append("\n".join(lines))
    name = f"_{prog.replace('-', '_')}"
    return "\n".join(
        [
            f"# bash completion for {prog} (generated: {prog} completion bash)",
            f"{name}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            "    local verb='' ns='' i",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        case "${COMP_WORDS[i]}" in',
            '            -n|--namespace) ns="-n ${COMP_WORDS[i+1]}"; ((i++)) ;;',
            "            --kubeconfig) ((i++)) ;;",
            "            -*) ;;",
            '            *) [[ -z "$verb" ]] && verb="${COMP_WORDS[i]}" ;;',
            "        esac",
            "    done",
            '    if [[ -z "$verb" ]]; then',
            f"        COMPREPLY=($(compgen -W {shlex.quote(' '.join([*sorted(verbs), *top_flags]))}"
            ' -- "$cur")); return',
            "    fi",
            '    case "$verb" in',
            *cases,
            "    esac",
            "}",
            f"complete -F {name} {prog} kubectl-kubevisor",
            "",
        ]
    )


def zsh(parser: argparse.ArgumentParser, *, prog: str = "kubevisor") -> str:
    """The zsh script: the bash one under ``bashcompinit`` (zsh's own bash bridge)."""
    return "\n".join(
        [
            f"#compdef {prog} kubectl-kubevisor",
            "autoload -U +X bashcompinit && bashcompinit",
            bash(parser, prog=prog),
        ]
    )


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    if shell == "bash":
        return bash(parser)
    if shell == "zsh":
        return zsh(parser)
    raise ValueError(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
