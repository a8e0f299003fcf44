"""Shell completion scripts (bash and zsh), generated from the CLI's own command table
(cli/main.py `_root()`, the one `--help` is made from), so they cannot drift from it.

Each script holds, per command path ("", "network", "network create", ...), its
subcommands, its options, which options take a value (and what that value is: a
network, a file, ...) and what its positionals are (container or network names, one of
some words, or a command). Its walker reads the words before the cursor as portway's
parser does (options anywhere, a value after an option that takes one, `--`, the
command of `run` and `exec` taking the rest) and offers what fits at the cursor.
Container and network names come from `portway __complete containers|networks`, run
with the same --host-netns and --state-dir as the line being completed; it prints
nothing (and starts no daemon) when portwayd is not running.
"""

from __future__ import annotations

from portway.cli.args import Arg, Command, Opt

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

# What an option's value is, by its metavar (anything else: free text, nothing offered).
_VALUE_KINDS = {"NET": "networks", "FILE": "files", "DIR": "dirs", "CONTAINER": "containers"}


def _arg_kind(path: str, arg: Arg) -> str:
    if arg.nargs == "rest":
        return "rest"
    if arg.choices:
        kind = "choice:" + ",".join(arg.choices)
    elif arg.metavar == "CONTAINER":
        kind = "containers"
    elif arg.metavar == "NETWORK" or (path.startswith("network ") and arg.metavar == "NAME"
                                      and path != "network create"):
        kind = "networks"
    else:
        kind = "none"
    return kind + ("+" if arg.nargs == "+" else "")


def _value_kind(opt: Opt) -> str:
    if opt.dest == "network":
        return "networks"
    if opt.dest == "output":
        return "files"
    return _VALUE_KINDS.get(opt.metavar, "none")


def _walk(cmd: Command, path: str = "") -> Iterator[tuple[str, Command]]:
    yield path, cmd
    for name, sub in cmd.subs.items():
        if not sub.hidden:
            yield from _walk(sub, f"{path} {name}".strip())


def table(root: Command) -> list[dict[str, str]]:
    """Per command path: subs, opts, valopts, args (space-separated words) and the value
    kind of each option that takes one."""
    out = []
    for path, cmd in _walk(root):
        names = [n for o in cmd.opts for n in o.names] + list(cmd.help_flags)
        valued = [o for o in cmd.opts if o.kind != "flag"]
        out.append({
            "path": path,
            "subs": " ".join(n for n, c in cmd.subs.items() if not c.hidden),
            "opts": " ".join(names),
            "valopts": " ".join(n for o in valued for n in o.names),
            "args": " ".join(_arg_kind(path, a) for a in cmd.args),
            "values": " ".join(f"{n}={_value_kind(o)}" for o in valued for n in o.names),
        })
    return out


def _spec_function(root: Command) -> str:
    lines = ["_portway_spec() {  # PATH: sets pw_subs pw_opts pw_valopts pw_args pw_values",
             "    case $1 in"]
    for row in table(root):
        lines.append(f'        "{row["path"]}")')
        for key in ("subs", "opts", "valopts", "args", "values"):
            lines.append(f'            pw_{key}="{row[key]}"')
        lines.append("            ;;")
    lines += ['        *) pw_subs="" pw_opts="" pw_valopts="" pw_args="" pw_values="" ;;',
              "    esac", "}"]
    return "\n".join(lines)


# The walker, in the syntax both shells share (bash arrays from 0 with COMP_WORDS, zsh
# from 1 with words: the first index and the words' name are filled in).
_WALK = r'''
    local pw_path="" pw_subs pw_opts pw_valopts pw_args pw_values w
    local -i i npos=0 rest=0
    _portway_spec ""
    for ((i = FIRST; i < CWORD; i++)); do
        w=${WORDS[i]}
        if ((rest)); then
            continue
        elif [[ $w == "=" ]]; then
            ((i++))  # bash splits --opt=value into --opt = value
        elif [[ $w == -- ]]; then
            [[ " $pw_args " == *" rest "* ]] && rest=1
        elif [[ $w == -* ]]; then
            if [[ $w != *=* && " $pw_valopts " == *" $w "* && ${WORDS[i+1]} != "=" ]]; then
                ((i++))
            fi
        elif [[ -n $pw_subs && $npos -eq 0 && " $pw_subs " == *" $w "* ]]; then
            pw_path=${pw_path:+$pw_path }$w
            _portway_spec "$pw_path"
        else
            ((npos++))
            [[ $(_portway_arg "$pw_args" $npos) == rest ]] && rest=1
        fi
    done
'''

_ARG_FUNCTION = r'''
_portway_arg() {  # ARGS N: the kind of the Nth positional
    local -a kinds
    kinds=(SPLIT)
    local -i n=$2 count=${#kinds[@]}
    if ((count == 0)); then echo none; return; fi
    if ((n > count)); then
        local last=${kinds[LAST]}
        [[ $last == *+ ]] && echo "${last%+}" || echo none
        return
    fi
    local kind=${kinds[NTH]}
    echo "${kind%+}"
}

_portway_value() {  # OPTION: the kind of its value
    local pair
    for pair in SPLITVALUES; do
        if [[ ${pair%%=*} == "$1" ]]; then echo "${pair#*=}"; return; fi
    done
    echo none
}

_portway_names() {  # KIND: container or network names, from the portway being completed
    local -a cmd
    cmd=("PROG")
    local -i i
    for ((i = FIRST; i < CWORD; i++)); do
        case ${WORDS[i]} in
            --host-netns|--state-dir) cmd+=("${WORDS[i]}" "${WORDS[i+1]}"); ((i++)) ;;
            --host-netns=*|--state-dir=*) cmd+=("${WORDS[i]}") ;;
            *) break ;;
        esac
    done
    "${cmd[@]}" __complete "$1" 2>/dev/null
}
'''


def _bash(root: Command) -> str:
    fill = {"FIRST": "1", "CWORD": "COMP_CWORD", "WORDS": "COMP_WORDS"}
    walk, helpers = _WALK, _ARG_FUNCTION
    for key, value in fill.items():
        walk, helpers = walk.replace(key, value), helpers.replace(key, value)
    helpers = (helpers.replace("SPLITVALUES", "$pw_values").replace("SPLIT", "$1")
               .replace("LAST", "count-1").replace("NTH", "n-1")
               .replace("PROG", "${COMP_WORDS[0]}"))
    return f"""# bash completion for portway: `portway completion bash`, generated from its
# command table. Source it, or put it where bash-completion looks
# (/usr/share/bash-completion/completions/portway).
{_spec_function(root)}
{helpers}
_portway() {{
{walk}
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} opt="" kind
    COMPREPLY=()
    if ((rest)); then
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    if [[ $prev == "=" ]]; then
        opt=${{COMP_WORDS[COMP_CWORD-2]}}
    elif [[ $cur == "=" ]]; then
        opt=$prev cur=""
    elif [[ $prev == -* && " $pw_valopts " == *" $prev "* ]]; then
        opt=$prev
    fi
    if [[ -n $opt ]]; then
        kind=$(_portway_value "$opt")
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$pw_opts" -- "$cur"))
        return
    elif [[ -n $pw_subs && $npos -eq 0 ]]; then
        COMPREPLY=($(compgen -W "$pw_subs" -- "$cur"))
        return
    else
        kind=$(_portway_arg "$pw_args" $((npos + 1)))
    fi
    case $kind in
        containers|networks)
            local names
            names=$(_portway_names "$kind")
            [[ $opt == --network || $opt == --net ]] && names+=" host none"
            COMPREPLY=($(compgen -W "$names" -- "$cur")) ;;
        choice:*)
            local choices=${{kind#choice:}}
            COMPREPLY=($(compgen -W "${{choices//,/ }}" -- "$cur")) ;;
        files) COMPREPLY=($(compgen -f -- "$cur")) ;;
        dirs) COMPREPLY=($(compgen -d -- "$cur")) ;;
        rest) COMPREPLY=($(compgen -c -- "$cur")) ;;
    esac
}}
complete -F _portway portway
"""


def _zsh(root: Command) -> str:
    fill = {"FIRST": "2", "CWORD": "CURRENT", "WORDS": "words"}
    walk, helpers = _WALK, _ARG_FUNCTION
    for key, value in fill.items():
        walk, helpers = walk.replace(key, value), helpers.replace(key, value)
    helpers = (helpers.replace("SPLITVALUES", "${=pw_values}").replace("SPLIT", "${=1}")
               .replace("LAST", "count").replace("NTH", "n").replace("PROG", "${words[1]}"))
    return f"""#compdef portway
# zsh completion for portway: `portway completion zsh`, generated from its command
# table. Put it in a directory of $fpath as _portway (e.g.
# /usr/local/share/zsh/site-functions/_portway).
{_spec_function(root)}
{helpers}
_portway() {{
{walk}
    local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} opt="" kind prefix=""
    if ((rest)); then
        _files
        return
    fi
    if [[ $cur == -*=* ]]; then
        opt=${{cur%%=*}} prefix="$opt=" cur=${{cur#*=}}
    elif [[ $prev == -* && " $pw_valopts " == *" $prev "* ]]; then
        opt=$prev
    fi
    if [[ -n $opt ]]; then
        kind=$(_portway_value "$opt")
    elif [[ $cur == -* ]]; then
        compadd -- ${{=pw_opts}}
        return
    elif [[ -n $pw_subs && $npos -eq 0 ]]; then
        compadd -- ${{=pw_subs}}
        return
    else
        kind=$(_portway_arg "$pw_args" $((npos + 1)))
    fi
    case $kind in
        containers|networks)
            local -a names
            names=(${{(f)"$(_portway_names "$kind")"}})
            [[ $opt == --network || $opt == --net ]] && names+=(host none)
            compadd -P "$prefix" -- $names ;;
        choice:*) compadd -P "$prefix" -- ${{(s:,:)kind#choice:}} ;;
        files) _files ;;
        dirs) _files -/ ;;
        rest) _command_names -e ;;
    esac
}}

_portway "$@"
"""


def script(shell: str, root: Command) -> str:
    return _bash(root) if shell == "bash" else _zsh(root)
