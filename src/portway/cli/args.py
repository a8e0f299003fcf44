"""The command line's grammar and its parser, by hand.

argparse imports `re` and `gettext`: about 10 ms of every CLI call, a third of
a `portway run -d`. This parser does what portway's commands need and no more:
options before, between or after positionals, `--opt=value` and `-oVALUE`,
`--flag=true|false` (as Docker's flags),
combined short flags (`-dq`), repeatable options, `--` ending the options, and
a trailing command (`run ... -- COMMAND ARG...`). Pure and standard-library only.
"""

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


# What a flag may be set to as --flag=VALUE: Go's strconv.ParseBool, as pflag takes it.
BOOLS = {**dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
         **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False)}


class UsageError(Exception):
    """A command line that does not parse: the message and the command it was for."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class HelpRequested(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Opt:
    """An option: kind "flag" (True when given; not given: False, or unset where a
    command must tell "not given" from "=false"), "value" (the last one given) or
    "list" (every one given, in order)."""

    def __init__(self, names: str, kind: str = "value", dest: str = "", metavar: str = "",
                 help: str = "", default: "Any" = None,
                 convert: "Callable[[str], Any] | None" = None, unset: "Any" = False) -> None:
        self.names = names.split()
        self.kind = kind
        self.dest = dest or self.names[-1].lstrip("-").replace("-", "_")
        self.metavar = metavar or self.dest.upper()
        self.help = help
        self.default: Any = [] if kind == "list" else (unset if kind == "flag" else default)
        self.convert = convert


class Arg:
    """A positional: nargs 1 (one), "?" (one or none: None), "+" (one or more) or "rest"
    (a command and its arguments: everything from the first word that is not an option,
    or after --)."""

    def __init__(self, dest: str, metavar: str = "", nargs: int | str = 1, help: str = "",
                 choices: tuple[str, ...] = ()) -> None:
        self.dest = dest
        self.metavar = metavar or dest.upper()
        self.nargs = nargs
        self.help = help
        self.choices = choices


class Command:
    def __init__(self, name: str, help: str = "", opts: tuple[Opt, ...] = (),
                 args: tuple[Arg, ...] = (), subs: "tuple[Command, ...]" = (),
                 sub_dest: str = "", help_flags: str = "-h --help", epilog: str = "",
                 hidden: bool = False) -> None:
        self.name = name
        self.hidden = hidden  # parsed, but left out of help and completion
        self.help = help
        self.opts = opts
        self.args = args
        self.subs = {c.name: c for c in subs}
        self.sub_dest = sub_dest
        self.help_flags = help_flags.split()
        self.epilog = epilog
        self.by_name = {n: o for o in opts for n in o.names}


def parse(root: Command, argv: list[str]) -> "dict[str, Any]":
    """The values of every option and positional along the chosen command path.
    Raises UsageError, or HelpRequested with the text to print."""
    values: dict[str, Any] = {}
    _parse(root, argv, root.name, values)
    return values


def _parse(cmd: Command, argv: list[str], prog: str, values: "dict[str, Any]") -> None:
    for o in cmd.opts:
        values[o.dest] = list(o.default) if o.kind == "list" else o.default
    if cmd.sub_dest:
        values[cmd.sub_dest] = None
    words: list[str] = []
    rest: list[str] | None = None
    takes_rest = bool(cmd.args) and cmd.args[-1].nargs == "rest"
    fixed = sum(1 for a in cmd.args if a.nargs == 1)
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            if takes_rest:
                rest = argv[i:]
                break
            words += argv[i:]
            break
        if word in cmd.help_flags:
            raise HelpRequested(help_text(cmd, prog))
        if word.startswith("-") and len(word) > 1:
            i = _option(cmd, word, argv, i, prog, values)
            continue
        if cmd.subs and not words:
            sub = cmd.subs.get(word)
            if sub is None:
                raise UsageError(f"unknown command {word!r} (choose from "
                                 f"{', '.join(cmd.subs)})", prog)
            values[cmd.sub_dest] = word
            _parse(sub, argv[i:], f"{prog} {word}", values)
            return
        words.append(word)
        if takes_rest and len(words) > fixed:  # the command begins here
            rest = [words.pop(), *argv[i:]]
            break
    _positionals(cmd, words, rest, prog, values)


def _option(cmd: Command, word: str, argv: list[str], i: int, prog: str,
            values: "dict[str, Any]") -> int:
    """Apply the option in word (and its value, maybe from argv[i]); the next index."""
    if word.startswith("--"):
        name, eq, inline = word.partition("=")
        value: str | None = inline if eq else None
    else:
        name, value = word[:2], (word[2:] or None)
    opt = cmd.by_name.get(name)
    if opt is None:
        raise UsageError(f"unknown option {name}", prog)
    if opt.kind == "flag":
        if value is not None and (word.startswith("--") or value.startswith("=")):
            # Docker's (pflag's) boolean flags: --ipv6=false, --internal=true, -d=false.
            value = value if word.startswith("--") else value[1:]
            if value not in BOOLS:
                raise UsageError(f"option {name}: invalid value {value!r} (true or false)",
                                 prog)
            values[opt.dest] = BOOLS[value]
            return i
        values[opt.dest] = True
        for letter in value or "":  # -dq: more short flags
            more = cmd.by_name.get(f"-{letter}")
            if more is None or more.kind != "flag":
                raise UsageError(f"unknown option -{letter} in {word}", prog)
            values[more.dest] = True
        return i
    if value is None:
        if i >= len(argv):
            raise UsageError(f"option {name} needs a value ({opt.metavar})", prog)
        value, i = argv[i], i + 1
    converted: Any = value
    if opt.convert is not None:
        try:
            converted = opt.convert(value)
        except ValueError:
            raise UsageError(f"option {name}: invalid value {value!r}", prog) from None
    if opt.kind == "list":
        values[opt.dest].append(converted)
    else:
        values[opt.dest] = converted
    return i


def _positionals(cmd: Command, words: list[str], rest: list[str] | None, prog: str,
                 values: "dict[str, Any]") -> None:
    if cmd.subs:
        return  # no subcommand given: the caller says what is missing
    for n, a in enumerate(cmd.args):
        if a.nargs == "rest":
            values[a.dest] = rest or []
        elif a.nargs == "?":
            values[a.dest] = words.pop(0) if words else None
            if values[a.dest] is not None and a.choices and values[a.dest] not in a.choices:
                raise UsageError(f"{a.metavar} must be one of {', '.join(a.choices)}, "
                                 f"not {values[a.dest]!r}", prog)
        elif a.nargs == "+":
            if not words:
                raise UsageError(f"{a.metavar} is missing (one or more)", prog)
            values[a.dest], words = words, []
        else:
            if not words:
                missing = " ".join(x.metavar for x in cmd.args[n:] if x.nargs != "rest")
                raise UsageError(f"missing {missing}", prog)
            word = words.pop(0)
            if a.choices and word not in a.choices:
                raise UsageError(f"{a.metavar} must be one of {', '.join(a.choices)}, "
                                 f"not {word!r}", prog)
            values[a.dest] = word
    if words:
        raise UsageError(f"unexpected argument(s): {' '.join(words)}", prog)


def usage(cmd: Command, prog: str) -> str:
    parts = [prog]
    if cmd.opts:
        parts.append("[OPTIONS]")
    if cmd.subs:
        parts.append("COMMAND")
    for a in cmd.args:
        if a.nargs == "rest":
            parts.append(f"-- {a.metavar}")
        elif a.nargs == "?":
            parts.append(f"[{'|'.join(a.choices) if a.choices else a.metavar}]")
        elif a.nargs == "+":
            parts.append(f"{a.metavar} [{a.metavar}...]")
        else:
            parts.append("|".join(a.choices) if a.choices else a.metavar)
    return "usage: " + " ".join(parts)


def help_text(cmd: Command, prog: str) -> str:
    lines = [usage(cmd, prog)]
    if cmd.help:
        lines += ["", cmd.help]
    rows: list[tuple[str, str]] = []
    if cmd.subs:
        lines += ["", "commands:"]
        rows = [(c.name, c.help) for c in cmd.subs.values() if not c.hidden]
        lines += _columns(rows)
    named = [a for a in cmd.args if a.help]
    if named:
        lines += ["", "arguments:"]
        lines += _columns([(a.metavar, a.help) for a in named])
    lines += ["", "options:"]
    rows = [(", ".join(cmd.help_flags), "show this help and exit")]
    for o in cmd.opts:
        names = ", ".join(o.names) + ("" if o.kind == "flag" else f" {o.metavar}")
        text = o.help + (" (repeatable)" if o.kind == "list" else "")
        rows.append((names, text))
    lines += _columns(rows)
    if cmd.epilog:
        lines += ["", cmd.epilog.rstrip()]
    return "\n".join(lines)


def _columns(rows: list[tuple[str, str]]) -> list[str]:
    width = min(max(len(left) for left, _ in rows), 28)
    out = []
    for left, right in rows:
        if len(left) > width:
            out += [f"  {left}", f"  {'':{width}}  {right}"] if right else [f"  {left}"]
        else:
            out.append(f"  {left:{width}}  {right}".rstrip())
    return out
