"""Shell completion for bash and zsh, generated from the parser: subcommands, their options, and experiment
names (asked of ``mxlab list`` when completing, so new folders complete at once)."""
from __future__ import annotations

import argparse

TAKES_EXPERIMENT = ("run", "tune", "best", "check", "runs", "compare", "reproduce")

TEMPLATE = r"""# mxlab completion ({shell}); enable with: eval "$(mxlab completion {shell})"
{zsh_prelude}_mxlab() {{
    local cur prev sub
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    sub="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=( $(compgen -W "{commands} --help --version" -- "$cur") )
        return
    fi
    case "$prev" in
        --image|--plot) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
    esac
    local opts=""
    case "$sub" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    elif [[ " {experiment_commands} " == *" $sub "* ]]; then
        COMPREPLY=( $(compgen -W "$(command mxlab list 2>/dev/null | awk 'NR>1 {{print $1}}')" -- "$cur") )
    fi
}}
complete -o default -F _mxlab mxlab
"""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    if shell not in ("bash", "zsh"):
        raise ValueError(f"completion {shell!r}: allowed: bash, zsh")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, p in sub.choices.items():
        options = sorted(o for a in p._actions for o in a.option_strings)
        cases.append(f'        {name}) opts="{" ".join(options)}" ;;')
    prelude = "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" \
        if shell == "zsh" else ""
    return TEMPLATE.format(shell=shell, zsh_prelude=prelude, commands=" ".join(sub.choices),
                           cases="\n".join(cases), experiment_commands=" ".join(TAKES_EXPERIMENT))
