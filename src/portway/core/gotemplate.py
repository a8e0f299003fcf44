"""Go's text/template, the language of Docker's `--format`: a lexer, a parser to a tree,
and an evaluator over Python values, with Docker's functions (json, join, split, upper,
lower, title, pad, truncate) beside Go's (and, or, not, eq, index, len, print, printf,
println, slice, ...). Standard library only, no I/O.

Python values stand for the Go values a Docker template sees:
- str, int, float, bool; list is a slice, dict a map (ranged over and printed in key
  order); None is nil (printed "<nil>"); MISSING is Go's "no value", what looking up a
  key that a map lacks gives (printed "<no value>");
- a Struct is one of Docker's formatter contexts (ps's .ID, .Names, .Label "KEY"):
  named fields, some of them methods that take arguments; asking it for a field it
  lacks is an error, as asking a Go struct is.

With strict=True (inspect's data), a dict whose keys all look like Go field names
(`State`, `NetworkSettings`) is taken for a struct: a field it lacks is an error
("map has no entry for key"), as Docker's inspect reports it; other dicts (labels,
networks by name, ports) are maps, where a missing key is "<no value>".

Rules of this module:
1. Whatever the template text and the data, parse() and Template.execute() return a
   string or raise TemplateError with one line in Go's wording ("template: :1:5: ...");
   never another exception.
2. Work is bounded: nesting depth, {{template}} recursion, loop steps and output size
   all have ceilings, so an odd template cannot hang the CLI or exhaust its memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 100          # parentheses and control structures inside each other
MAX_TEMPLATE_DEPTH = 50    # {{template}} calls inside each other
MAX_STEPS = 1_000_000      # actions run and loop iterations, in all
MAX_OUTPUT = 32 << 20      # characters of output
MAX_WIDTH = 1_000_000      # printf widths and precisions, as Go's fmt


class TemplateError(Exception):
    """A template that does not parse or cannot run on its data. `partial` is what it
    wrote before it failed."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial


class _Missing:
    """Go's invalid value: what a map lookup of a missing key gives."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_NOFINAL: Any = object()  # no value piped in from a previous command


@dataclass(frozen=True)
class Method:
    """A Struct field that is a method: called with its arguments (all strings or ints,
    as `params` says: "str", "int" or "any")."""

    fn: Callable[..., Any]
    params: tuple[str, ...] = ()


@dataclass
class Struct:
    """One of Docker's formatter contexts: fields by name, each a value or a Method.
    `{{json .}}` gives the fields that take no arguments, by name (Docker marshals its
    contexts as maps). lenient: a field it lacks is "<no value>" (a header map)."""

    type_name: str
    fields: dict[str, Any]
    lenient: bool = False

    def marshal(self) -> dict[str, Any]:
        out = {}
        for name in sorted(self.fields):
            value = self.fields[name]
            if isinstance(value, Method):
                if value.params:
                    continue
                value = value.fn()
            out[name] = value
        return out


# ---------------------------------------------------------------------------- lexer

_SPACE = " \t\r\n"
_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "nil",
             "template", "with"}


@dataclass(frozen=True)
class _Tok:
    kind: str   # text {{ }} space field var ident keyword bool number char string raw
    #             dot nil | ( ) := = punct eof
    value: str
    pos: int


def _alnum(c: str) -> bool:
    # Go's unicode.IsLetter or unicode.IsDigit (decimal digits only: not '¹').
    return c == "_" or c.isalpha() or c.isdecimal()


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    n = len(text)
    i = 0
    trim_next = False
    while i <= n:
        start = text.find("{{", i)
        end = n if start < 0 else start
        chunk = text[i:end]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
            trim_next = False
        if start >= 0 and text.startswith("-", start + 2) and start + 3 < n and \
                text[start + 3] in _SPACE:
            chunk = chunk.rstrip(_SPACE)
            inside = start + 4
        else:
            inside = start + 2
        if chunk:
            toks.append(_Tok("text", chunk, i))
        if start < 0:
            break
        at = _skip_comment(text, inside, start)
        if at is not None:
            i, trim_next = at
            continue
        toks.append(_Tok("{{", "{{", start))
        i, trim_next = _lex_action(text, inside, toks)
    toks.append(_Tok("eof", "", n))
    return toks


def _skip_comment(text: str, at: int, start: int) -> tuple[int, bool] | None:
    """A comment {{/* ... */}} at `at`: where the text goes on, and whether it trims."""
    if not text.startswith("/*", at):
        return None
    close = text.find("*/", at + 2)
    if close < 0:
        raise _lex_error(text, start, "unclosed comment")
    after = close + 2
    if after + 3 <= len(text) and text[after] in _SPACE and text.startswith("-}}", after + 1):
        return after + 4, True
    if text.startswith("}}", after):
        return after + 2, False
    raise _lex_error(text, start, "comment ends before closing delimiter")


def _lex_error(text: str, pos: int, message: str) -> TemplateError:
    return TemplateError(f"template: :{text.count(chr(10), 0, pos) + 1}: {message}")


def _lex_action(text: str, i: int, toks: list[_Tok]) -> tuple[int, bool]:
    """The tokens of one action from i; where the text goes on and whether it trims."""
    n = len(text)
    depth = 0
    while True:
        if i >= n:
            raise _lex_error(text, i, "unclosed action")
        c = text[i]
        if text.startswith("}}", i):
            if depth > 0:
                raise _lex_error(text, i, "unclosed left paren")
            toks.append(_Tok("}}", "}}", i))
            return i + 2, False
        if c in _SPACE:
            j = i
            while j < n and text[j] in _SPACE:
                j += 1
            if text.startswith("-}}", j):
                if depth > 0:
                    raise _lex_error(text, j, "unclosed left paren")
                toks.append(_Tok("}}", "}}", j))
                return j + 3, True
            toks.append(_Tok("space", text[i:j], i))
            i = j
        elif c == "=":
            toks.append(_Tok("=", "=", i))
            i += 1
        elif c == ":":
            if not text.startswith(":=", i):
                raise _lex_error(text, i, "expected :=")
            toks.append(_Tok(":=", ":=", i))
            i += 2
        elif c == "|":
            toks.append(_Tok("|", "|", i))
            i += 1
        elif c == '"':
            j = i + 1
            while True:
                if j >= n or text[j] == "\n":
                    raise _lex_error(text, i, "unterminated quoted string")
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == '"':
                    break
                j += 1
            toks.append(_Tok("string", text[i:j + 1], i))
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise _lex_error(text, i, "unterminated raw quoted string")
            toks.append(_Tok("raw", text[i:j + 1], i))
            i = j + 1
        elif c == "'":
            j = i + 1
            while True:
                if j >= n or text[j] == "\n":
                    raise _lex_error(text, i, "unterminated character constant")
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "'":
                    break
                j += 1
            toks.append(_Tok("char", text[i:j + 1], i))
            i = j + 1
        elif c == "$":
            j = i + 1
            while j < n and _alnum(text[j]):
                j += 1
            _check_terminator(text, j)
            toks.append(_Tok("var", text[i:j], i))
            i = j
        elif c == "." and not (i + 1 < n and _digit(text[i + 1])):
            j = i + 1
            while j < n and _alnum(text[j]):
                j += 1
            if j > i + 1:
                _check_terminator(text, j)
            toks.append(_Tok("dot", ".", i) if j == i + 1 else _Tok("field", text[i:j], i))
            i = j
        elif c in "+-." or _digit(c):
            j = _scan_number(text, i)
            if j < n and _alnum(text[j]):
                raise _lex_error(text, i, f"bad number syntax: {text[i:j + 1]!r}")
            toks.append(_Tok("number", text[i:j], i))
            i = j
        elif c == "_" or c.isalpha():
            j = i + 1
            while j < n and _alnum(text[j]):
                j += 1
            word = text[i:j]
            _check_terminator(text, j)
            kind = "bool" if word in ("true", "false") else \
                "nil" if word == "nil" else "keyword" if word in _KEYWORDS else "ident"
            toks.append(_Tok(kind, word, i))
            i = j
        elif c == "(":
            depth += 1
            toks.append(_Tok("(", "(", i))
            i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise _lex_error(text, i, "unexpected right paren")
            toks.append(_Tok(")", ")", i))
            i += 1
        elif c.isascii() and c.isprintable():
            toks.append(_Tok("punct", c, i))
            i += 1
        else:
            raise _lex_error(text, i, f"unrecognized character in action: {_quote_rune(c)}")


def _check_terminator(text: str, j: int) -> None:
    """What follows a word must end it (Go's lexer: a space, . , | : ( ) or }})."""
    if j < len(text) and text[j] not in _SPACE + ".,|:()" and not text.startswith("}}", j):
        raise _lex_error(text, j, f"bad character {_quote_rune(text[j])}")


def _scan_number(text: str, i: int) -> int:
    n = len(text)
    if text[i] in "+-":
        i += 1
    digits = "0123456789_"
    if text.startswith("0", i) and i + 1 < n and text[i + 1] in "xXoObB":
        digits = {"x": "0123456789abcdefABCDEF_", "o": "01234567_",
                  "b": "01_"}[text[i + 1].lower()]
        i += 2
    while i < n and text[i] in digits:
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i] in digits:
            i += 1
    if (len(digits) == 11 and i < n and text[i] in "eE") or \
            (len(digits) == 23 and i < n and text[i] in "pP"):
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        while i < n and text[i] in "0123456789_":
            i += 1
    return i


def _quote_rune(c: str) -> str:
    """Go's %#U: U+0041 'A'."""
    return f"U+{ord(c):04X} '{c}'" if c.isprintable() else f"U+{ord(c):04X}"


# --------------------------------------------------------------------------- parser

@dataclass
class _Node:
    pos: int
    src: str


@dataclass
class _Text(_Node):
    text: str


@dataclass
class _Field(_Node):
    idents: tuple[str, ...]


@dataclass
class _Var(_Node):
    idents: tuple[str, ...]   # the variable's name ("$x"), then fields


@dataclass
class _Ident(_Node):
    name: str


@dataclass
class _Dot(_Node):
    pass


@dataclass
class _Nil(_Node):
    pass


@dataclass
class _Literal(_Node):
    value: Any


@dataclass
class _Command(_Node):
    args: list[_Node]


@dataclass
class _Pipe(_Node):
    decl: list[str]
    assign: bool
    cmds: list[_Command]


@dataclass
class _Chain(_Node):
    node: _Node
    fields: tuple[str, ...]


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _Control(_Node):
    kind: str  # if, range, with
    pipe: _Pipe
    body: list[_Node]
    orelse: list[_Node] | None


@dataclass
class _Call(_Node):
    name: str
    pipe: _Pipe | None


@dataclass
class _Jump(_Node):
    kind: str  # break, continue


@dataclass
class _End:
    pos: int


@dataclass
class _Else:
    pos: int


BUILTINS = frozenset({"and", "or", "not", "len", "index", "slice", "print", "printf",
                      "println", "html", "js", "urlquery", "call", "eq", "ne", "lt", "le",
                      "gt", "ge"})
DOCKER_FUNCS = frozenset({"json", "split", "join", "title", "lower", "upper", "pad",
                          "truncate"})


class _Parser:
    def __init__(self, text: str, funcs: frozenset[str]) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.funcs = funcs
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0
        self.templates: dict[str, list[_Node]] = {}

    # tokens

    def next(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next_nonspace(self) -> _Tok:
        t = self.next()
        while t.kind == "space":
            t = self.next()
        return t

    def peek_nonspace(self) -> _Tok:
        j = self.i
        while self.toks[j].kind == "space":
            j += 1
        return self.toks[j]

    def skip_space(self) -> None:
        while self.toks[self.i].kind == "space":
            self.i += 1

    def error(self, pos: int, message: str) -> TemplateError:
        return _lex_error(self.text, pos, message)

    def unexpected(self, t: _Tok, context: str) -> TemplateError:
        if t.kind == "eof":
            what = "EOF"
        elif t.kind == "keyword":
            what = f"<{t.value}>"
        elif len(t.value) > 10:
            what = go_quote(t.value[:10]) + "..."
        else:
            what = go_quote(t.value)
        return self.error(t.pos, f"unexpected {what} in {context}")

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(pos, f"template nested more than {MAX_NESTING} deep")

    # structure

    def parse(self) -> list[_Node]:
        nodes: list[_Node] = []
        while True:
            t = self.peek()
            if t.kind == "eof":
                return nodes
            if t.kind == "text":
                self.next()
                nodes.append(_Text(t.pos, t.value, t.value))
                continue
            self.next()  # {{
            if self.peek_nonspace().kind == "keyword" and self.peek_nonspace().value == "define":
                self.next_nonspace()
                self.definition()
                continue
            node = self.action()
            if isinstance(node, (_End, _Else)):
                word = "end" if isinstance(node, _End) else "else"
                raise self.error(node.pos, f"unexpected {{{{{word}}}}}")
            nodes.append(node)

    def item_list(self) -> tuple[list[_Node], _End | _Else]:
        nodes: list[_Node] = []
        while True:
            t = self.peek()
            if t.kind == "eof":
                raise self.error(t.pos, "unexpected EOF")
            if t.kind == "text":
                self.next()
                nodes.append(_Text(t.pos, t.value, t.value))
                continue
            self.next()
            node = self.action()
            if isinstance(node, (_End, _Else)):
                return nodes, node
            nodes.append(node)

    def definition(self) -> None:
        t = self.next_nonspace()
        if t.kind not in ("string", "raw"):
            raise self.unexpected(t, "define clause")
        name = _unquote(self, t)
        close = self.next_nonspace()
        if close.kind != "}}":
            raise self.unexpected(close, "define clause")
        saved, self.vars = self.vars, ["$"]
        body, stop = self.item_list()
        if not isinstance(stop, _End):
            raise self.error(stop.pos, "unexpected {{else}} in definition")
        self.vars = saved
        self.templates[name] = body

    def action(self) -> _Node | _End | _Else:
        t = self.next_nonspace()
        if t.kind == "keyword":
            if t.value == "end":
                self.expect_close("end")
                return _End(t.pos)
            if t.value == "else":
                after = self.peek_nonspace()
                if after.kind == "keyword" and after.value in ("if", "with"):
                    return _Else(t.pos)
                self.expect_close("else")
                return _Else(t.pos)
            if t.value in ("if", "range", "with"):
                return self.control(t.value, t.pos)
            if t.value in ("break", "continue"):
                if self.range_depth == 0:
                    raise self.error(t.pos, f"{{{{{t.value}}}}} outside {{{{range}}}}")
                self.expect_close(t.value)
                return _Jump(t.pos, t.value, t.value)
            if t.value == "template":
                return self.template_call(t.pos)
            if t.value == "block":
                return self.block(t.pos)
            raise self.unexpected(t, "command")
        self.i -= 1  # not a keyword: the token starts the pipeline
        pipe = self.pipeline("command", "}}")
        return _Action(pipe.pos, pipe.src, pipe)

    def expect_close(self, context: str) -> None:
        t = self.next_nonspace()
        if t.kind != "}}":
            raise self.unexpected(t, context)

    def control(self, kind: str, pos: int) -> _Control:
        self.nest(pos)
        mark = len(self.vars)
        pipe = self.pipeline(kind, "}}")
        if kind == "range":
            self.range_depth += 1
        body, stop = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        orelse: list[_Node] | None = None
        if isinstance(stop, _Else):
            after = self.peek_nonspace()
            if kind in ("if", "with") and after.kind == "keyword" and after.value == kind:
                self.next_nonspace()
                orelse = [self.control(kind, after.pos)]
            else:
                orelse, stop = self.item_list()
                if not isinstance(stop, _End):
                    raise self.error(stop.pos, "expected end; found {{else}}")
        del self.vars[mark:]
        self.depth -= 1
        return _Control(pos, pipe.src, kind, pipe, body, orelse)

    def template_call(self, pos: int) -> _Call:
        t = self.next_nonspace()
        if t.kind not in ("string", "raw"):
            raise self.unexpected(t, "template clause")
        name = _unquote(self, t)
        pipe = None
        if self.peek_nonspace().kind != "}}":
            pipe = self.pipeline("template clause", "}}")
        else:
            self.next_nonspace()
        return _Call(pos, f"template {t.value}", name, pipe)

    def block(self, pos: int) -> _Call:
        t = self.next_nonspace()
        if t.kind not in ("string", "raw"):
            raise self.unexpected(t, "block clause")
        name = _unquote(self, t)
        pipe = self.pipeline("block clause", "}}")
        saved, self.vars = self.vars, ["$"]
        self.nest(pos)
        body, stop = self.item_list()
        self.depth -= 1
        if not isinstance(stop, _End):
            raise self.error(stop.pos, "unexpected {{else}} in block clause")
        self.vars = saved
        self.templates[name] = body
        return _Call(pos, f"block {t.value}", name, pipe)

    # pipelines

    def pipeline(self, context: str, end: str) -> _Pipe:
        start = self.peek_nonspace().pos
        decl: list[str] = []
        assign = False
        while self.peek_nonspace().kind == "var":
            save = self.i
            v = self.next_nonspace()
            after = self.peek_nonspace()
            if after.kind in (":=", "="):
                self.next_nonspace()
                assign = after.kind == "="
                decl.append(v.value)
                self.vars.append(v.value)
                break
            if after.kind == "punct" and after.value == ",":
                self.next_nonspace()
                decl.append(v.value)
                self.vars.append(v.value)
                if context == "range" and len(decl) < 2:
                    if self.peek_nonspace().kind in ("var", "}}", ")"):
                        continue
                    raise self.error(after.pos, "range can only initialize variables")
                raise self.error(after.pos, f"too many declarations in {context}")
            self.i = save  # "$x" is the pipeline's first operand
            break
        cmds: list[_Command] = []
        while True:
            save = self.i
            t = self.next_nonspace()
            if t.kind == end:
                if not cmds:
                    raise self.error(t.pos, f"missing value for {context}")
                for n, cmd in enumerate(cmds[1:], 2):
                    if isinstance(cmd.args[0], (_Literal, _Dot, _Nil)):
                        raise self.error(cmd.pos,
                                         f"non executable command in pipeline stage {n}")
                stop = t.pos
                return _Pipe(start, self.text[start:stop].strip(), decl, assign, cmds)
            if t.kind in ("bool", "char", "dot", "field", "ident", "number", "nil", "raw",
                          "string", "var", "("):
                self.i = save
                cmds.append(self.command())
            else:
                raise self.unexpected(t, context)

    def command(self) -> _Command:
        start = self.peek_nonspace().pos
        args: list[_Node] = []
        while True:
            self.skip_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            t = self.next()
            if t.kind == "space":
                continue
            if t.kind in ("}}", ")"):
                self.i -= 1
            elif t.kind != "|":
                raise self.unexpected(t, "operand")
            break
        if not args:
            raise self.error(start, "empty command")
        end = self.toks[self.i].pos
        return _Command(start, self.text[start:end].strip(" \t\r\n|"), args)

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().kind == "field":
            fields: list[str] = []
            while self.peek().kind == "field":
                fields.append(self.next().value[1:])
            src = self.text[node.pos:self.toks[self.i].pos]
            if isinstance(node, _Field):
                return _Field(node.pos, src, node.idents + tuple(fields))
            if isinstance(node, _Var):
                return _Var(node.pos, src, node.idents + tuple(fields))
            if isinstance(node, (_Literal, _Nil, _Dot)):
                raise self.error(node.pos, f"unexpected . after term {go_quote(node.src)}")
            return _Chain(node.pos, src, node, tuple(fields))
        return node

    def term(self) -> _Node | None:
        self.skip_space()
        save = self.i
        t = self.next()
        if t.kind == "ident":
            if t.value not in self.funcs:
                raise self.error(t.pos, f'function "{t.value}" not defined')
            return _Ident(t.pos, t.value, t.value)
        if t.kind == "dot":
            return _Dot(t.pos, ".")
        if t.kind == "nil":
            return _Nil(t.pos, "nil")
        if t.kind == "var":
            if t.value not in self.vars:
                raise self.error(t.pos, f'undefined variable "{t.value}"')
            return _Var(t.pos, t.value, (t.value,))
        if t.kind == "field":
            return _Field(t.pos, t.value, (t.value[1:],))
        if t.kind == "bool":
            return _Literal(t.pos, t.value, t.value == "true")
        if t.kind in ("number", "char"):
            return _Literal(t.pos, t.value, _number(self, t))
        if t.kind == "(":
            self.nest(t.pos)
            pipe = self.pipeline("parenthesized pipeline", ")")
            self.depth -= 1
            return _Pipe(t.pos, self.text[t.pos:self.toks[self.i].pos], pipe.decl, pipe.assign,
                         pipe.cmds)
        if t.kind in ("string", "raw"):
            return _Literal(t.pos, t.value, _unquote(self, t))
        self.i = save
        return None


def _unquote(p: _Parser, t: _Tok) -> str:
    if t.kind == "raw":
        return t.value[1:-1].replace("\r", "")
    try:
        return _unescape(t.value[1:-1], '"')
    except ValueError:
        raise p.error(t.pos, "invalid syntax") from None


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\"}


def _unescape(body: str, quote: str) -> str:
    """Go's strconv.Unquote of a quoted literal's inside (quote: its quote character)."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == quote:
            raise ValueError("unescaped quote")
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("bad escape")
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e == quote:
            out.append(quote)
            i += 2
        elif e in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + size]
            if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("bad escape")
            code = int(digits, 16)
            if e == "x":
                out.append(chr(0xDC00 + code) if code >= 0x80 else chr(code))
            else:
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise ValueError("bad escape")
                out.append(chr(code))
            i += 2 + size
        elif e in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or \
                    int(digits, 8) > 255:
                raise ValueError("bad escape")
            code = int(digits, 8)
            out.append(chr(0xDC00 + code) if code >= 0x80 else chr(code))
            i += 4
        else:
            raise ValueError("bad escape")
    return "".join(out)


def _number(p: _Parser, t: _Tok) -> int | float:
    text = t.value
    if t.kind == "char":
        try:
            inner = _unescape(text[1:-1], "'")
        except ValueError:
            raise p.error(t.pos, f"malformed character constant: {text}") from None
        if len(inner) != 1:
            raise p.error(t.pos, f"malformed character constant: {text}")
        return ord(inner)
    body = text.lstrip("+-")
    negative = text.startswith("-")
    try:
        if body.endswith(("i", "I")):
            raise ValueError("complex")
        clean = body.replace("_", "")
        lower = clean.lower()
        if lower.startswith("0x") and "p" in lower:
            value: int | float = float.fromhex(clean)
        elif lower.startswith(("0x", "0o", "0b")):
            value = int(clean, 0)
        elif any(c in lower for c in ".e"):
            value = float(clean)
        elif len(clean) > 1 and clean.startswith("0"):
            value = int(clean, 8)
        else:
            value = int(clean, 10)
        if "__" in body or body.startswith("_") or body.endswith("_"):
            raise ValueError("underscores")
    except ValueError:
        raise p.error(t.pos, f'illegal number syntax: "{text}"') from None
    if isinstance(value, float) and not math.isfinite(value):
        raise p.error(t.pos, f"illegal number syntax: \"{text}\"")
    return -value if negative else value


# ------------------------------------------------------------------------ templates

def parse(text: str, funcs: frozenset[str] = BUILTINS | DOCKER_FUNCS) -> Template:
    """A template, parsed (TemplateError if it does not parse)."""
    return Template(text, funcs)


class Template:
    def __init__(self, text: str, funcs: frozenset[str] = BUILTINS | DOCKER_FUNCS) -> None:
        try:
            parser = _Parser(text, funcs)
            self.root = parser.parse()
        except RecursionError:
            raise TemplateError("template: :1: template nested too deeply") from None
        self.text = text
        self.templates = parser.templates

    def execute(self, data: Any, funcs: Mapping[str, Func] | None = None,
                strict: bool = False) -> str:
        """The template run on data; funcs replace functions by name (Docker's table
        headers do). TemplateError if it cannot run."""
        run = _Exec(self, dict(FUNCS, **(funcs or {})), strict)
        run.vars = [("$", data)]
        try:
            run.walk_list(data, self.root)
        except TemplateError as exc:
            raise TemplateError(exc.message, "".join(run.out)) from None
        except RecursionError:
            raise TemplateError("template: :1: template nested too deeply",
                                "".join(run.out)) from None
        return "".join(run.out)


# ----------------------------------------------------------------------- evaluation

class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclass(frozen=True)
class Func:
    """A function templates can call: params are "str", "int", "strlist", "any" (nil
    for no value) or "value" (as given, MISSING included); variadic: the kind of any
    further arguments. fn gets the converted arguments."""

    fn: Callable[..., Any]
    params: tuple[str, ...] = ()
    variadic: str | None = None


def type_name(v: Any) -> str:
    """Go's name for the type of v, as its error messages say it."""
    if isinstance(v, Struct):
        return v.type_name
    if v is None or v is MISSING:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "[]string" if v and all(isinstance(x, str) for x in v) else "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


def _looks_like_struct(d: Mapping[str, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and k[:1].isupper() and k.isalnum() and
                           k.isascii() for k in d)


class _Exec:
    def __init__(self, template: Template, funcs: dict[str, Func], strict: bool) -> None:
        self.template = template
        self.funcs = funcs
        self.strict = strict
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.depth = 0
        self.name = ""
        self.vars: list[tuple[str, Any]] = []
        self.node: _Node | None = None

    def error(self, message: str) -> TemplateError:
        text = self.template.text
        node = self.node
        if node is None:
            return TemplateError(f"template: {self.name}: {message}")
        line = text.count("\n", 0, node.pos) + 1
        col = node.pos - (text.rfind("\n", 0, node.pos) + 1)
        return TemplateError(f'template: {self.name}:{line}:{col}: executing "{self.name}" '
                             f"at <{node.src}>: {message}")

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.error(f"template takes more than {MAX_STEPS} steps")

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise self.error(f"template output larger than {MAX_OUTPUT} characters")
        self.out.append(text)

    # walking

    def walk_list(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            self.walk(dot, node)

    def walk(self, dot: Any, node: _Node) -> None:
        self.step()
        self.node = node
        if isinstance(node, _Text):
            self.write(node.text)
        elif isinstance(node, _Action):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.node = node
                self.write(print_value(value))
        elif isinstance(node, _Control):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_with(dot, node)
        elif isinstance(node, _Jump):
            raise _Break() if node.kind == "break" else _Continue()
        elif isinstance(node, _Call):
            self.walk_template(dot, node)

    def walk_if_with(self, dot: Any, node: _Control) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            self.node = node
            truth = is_true(value)
            if truth is None:
                raise self.error(f"if/with can't use {print_value(value)}")
            if truth:
                self.walk_list(value if node.kind == "with" else dot, node.body)
            elif node.orelse is not None:
                self.walk_list(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: _Control) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            self.node = node
            inner = len(self.vars)
            decl = node.pipe.decl
            if isinstance(value, dict):
                items: Any = ((k, value[k]) for k in sorted(value, key=_sort_key))
                empty = not value
            elif isinstance(value, list | tuple):
                items = enumerate(value)
                empty = not value
            elif isinstance(value, int) and not isinstance(value, bool):
                if len(decl) > 1:
                    raise self.error(f"can't use {value} to iterate over more than one "
                                     "variable")
                items = ((i, i) for i in range(value))
                empty = value <= 0
            elif value is None or value is MISSING:
                items, empty = (), True
            else:
                raise self.error(f"range can't iterate over {print_value(value)}")
            try:
                for index, elem in items:
                    self.step()
                    del self.vars[inner:]
                    self.set_range_vars(decl, node.pipe.assign, index, elem)
                    try:
                        self.walk_list(elem, node.body)
                    except _Continue:
                        pass
            except _Break:
                pass
            if empty and node.orelse is not None:
                del self.vars[inner:]
                self.walk_list(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def set_range_vars(self, decl: list[str], assign: bool, index: Any, elem: Any) -> None:
        if not decl:
            return
        if assign:
            if len(decl) > 1:
                self.set_var(decl[0], index)
                self.set_var(decl[1], elem)
            else:
                self.set_var(decl[0], elem)
            return
        # The pipeline pushed its variables (the last one topmost): the element goes in
        # the top one, the index in the one below.
        self.vars[-1] = (self.vars[-1][0], elem)
        if len(decl) > 1:
            self.vars[-2] = (self.vars[-2][0], index)

    def walk_template(self, dot: Any, node: _Call) -> None:
        body = self.template.templates.get(node.name)
        if body is None:
            raise self.error(f'template "{node.name}" not defined')
        if self.depth >= MAX_TEMPLATE_DEPTH:
            raise self.error(f"exceeded maximum template depth ({MAX_TEMPLATE_DEPTH})")
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else MISSING
        saved = self.vars, self.name
        self.vars, self.name = [("$", new_dot)], node.name
        self.depth += 1
        try:
            self.walk_list(new_dot, body)
        finally:
            self.depth -= 1
            self.vars, self.name = saved

    # variables

    def var(self, name: str) -> Any:
        for have, value in reversed(self.vars):
            if have == name:
                return value
        raise self.error(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.error(f"undefined variable: {name}")

    # pipelines and commands

    def eval_pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        self.node = pipe
        value = _NOFINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:
                value = MISSING  # Go digs a nil out of its interface: no value
        for name in pipe.decl:
            if pipe.assign:
                self.set_var(name, value)
            else:
                self.vars.append((name, value))
        return value

    def eval_command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        first = cmd.args[0]
        self.node = first
        if isinstance(first, _Field):
            return self.eval_fields(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, _Chain):
            receiver = self.eval_arg(dot, first.node)
            return self.eval_fields(dot, receiver, first, first.fields, cmd.args, final)
        if isinstance(first, _Ident):
            return self.call_function(dot, first, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _Var):
            value = self.var(first.idents[0])
            if len(first.idents) == 1:
                self.not_a_function(cmd.args, final)
                return value
            return self.eval_fields(dot, value, first, first.idents[1:], cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Literal):
            return first.value
        if isinstance(first, _Dot):
            return dot
        raise self.error("nil is not a command")

    def not_a_function(self, args: list[_Node], final: Any) -> None:
        if len(args) > 1 or final is not _NOFINAL:
            raise self.error(f"can't give argument to non-function {args[0].src}")

    def eval_arg(self, dot: Any, node: _Node) -> Any:
        self.node = node
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None
        if isinstance(node, _Field):
            return self.eval_fields(dot, dot, node, node.idents, [node], _NOFINAL)
        if isinstance(node, _Var):
            value = self.var(node.idents[0])
            if len(node.idents) == 1:
                return value
            return self.eval_fields(dot, value, node, node.idents[1:], [node], _NOFINAL)
        if isinstance(node, _Pipe):
            return self.eval_pipeline(dot, node)
        if isinstance(node, _Ident):
            return self.call_function(dot, node, [node], _NOFINAL)
        if isinstance(node, _Chain):
            receiver = self.eval_arg(dot, node.node)
            return self.eval_fields(dot, receiver, node, node.fields, [node], _NOFINAL)
        if isinstance(node, _Literal):
            return node.value
        raise self.error(f"can't handle {node.src} for arg")  # pragma: no cover

    def eval_fields(self, dot: Any, receiver: Any, node: _Node, idents: tuple[str, ...],
                    args: list[_Node], final: Any) -> Any:
        for name in idents[:-1]:
            receiver = self.field(dot, receiver, name, node, [node], _NOFINAL)
        return self.field(dot, receiver, idents[-1], node, args, final)

    def field(self, dot: Any, receiver: Any, name: str, node: _Node, args: list[_Node],
              final: Any) -> Any:
        self.node = node
        has_args = len(args) > 1 or final is not _NOFINAL
        if receiver is MISSING:
            return MISSING
        if receiver is None:
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        if isinstance(receiver, Struct):
            if name in receiver.fields:
                member = receiver.fields[name]
                if isinstance(member, Method):
                    return self.call(dot, name, Func(member.fn, member.params), args, final)
                if has_args:
                    raise self.error(f"{name} has arguments but cannot be invoked as "
                                     "function")
                return member
            if receiver.lenient:
                return MISSING
            raise self.error(f"can't evaluate field {name} in type {receiver.type_name}")
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            if name in receiver:
                return receiver[name]
            if self.strict and _looks_like_struct(receiver):
                raise self.error(f'map has no entry for key "{name}"')
            return MISSING
        raise self.error(f"can't evaluate field {name} in type {type_name(receiver)}")

    def call_function(self, dot: Any, ident: _Ident, args: list[_Node], final: Any) -> Any:
        name = ident.name
        if name in ("and", "or"):
            return self.and_or(dot, name, args, final)
        func = self.funcs.get(name)
        if func is None:  # pragma: no cover - the parser checks the names
            raise self.error(f'"{name}" is not a defined function')
        return self.call(dot, name, func, args, final)

    def and_or(self, dot: Any, name: str, args: list[_Node], final: Any) -> Any:
        nodes = args[1:]
        count = len(nodes) + (final is not _NOFINAL)
        if count < 1:
            raise self.error(f"wrong number of args for {name}: want at least 1 got 0")
        value: Any = MISSING
        for i in range(count):
            value = final if i == len(nodes) else self.eval_arg(dot, nodes[i])
            if value is MISSING:
                value = None
            if bool(is_true(value)) == (name == "or"):
                return value
        return value

    def call(self, dot: Any, name: str, func: Func, args: list[_Node], final: Any) -> Any:
        values = [self.eval_arg(dot, a) for a in args[1:]]
        if final is not _NOFINAL:
            values.append(final)
        fixed = len(func.params)
        if func.variadic is None and len(values) != fixed:
            self.node = args[0]
            raise self.error(f"wrong number of args for {name}: want {fixed} got "
                             f"{len(values)}")
        if func.variadic is not None and len(values) < fixed:
            self.node = args[0]
            raise self.error(f"wrong number of args for {name}: want at least {fixed} got "
                             f"{len(values)}")
        kinds = [*func.params, *[func.variadic or "any"] * (len(values) - fixed)]
        converted = [self.convert(v, kind) for v, kind in zip(values, kinds, strict=True)]
        self.node = args[0]
        try:
            return func.fn(*converted)
        except _CallError as exc:
            raise self.error(f"error calling {name}: {exc}") from None

    def convert(self, value: Any, kind: str) -> Any:
        if kind == "value":
            return value
        if value is MISSING:
            if kind == "any":
                return None
            raise self.error(f"invalid value; expected {_KIND_NAMES[kind]}")
        if kind == "any":
            return value
        if (kind == "str" and isinstance(value, str)) or \
                (kind == "int" and isinstance(value, int) and not isinstance(value, bool)):
            return value
        if kind == "strlist" and isinstance(value, list | tuple) and \
                all(isinstance(x, str) for x in value):
            return list(value)
        raise self.error(f"wrong type for value; expected {_KIND_NAMES[kind]}; got "
                         f"{type_name(value)}")


_KIND_NAMES = {"str": "string", "int": "int", "strlist": "[]string", "any": "interface {}"}


class _CallError(Exception):
    """A function failed on its arguments: "error calling NAME: ..."."""


# -------------------------------------------------------------------- Go's printing

def is_true(v: Any) -> bool | None:
    """Go's truth of a value (None: it has none, a struct-less kind Go cannot test)."""
    if v is MISSING or v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | tuple | dict):
        return len(v) > 0
    if isinstance(v, Struct):
        return True
    return None


def _sort_key(k: Any) -> Any:
    return (0, k) if isinstance(k, int | float) and not isinstance(k, bool) else (1, str(k))


def print_value(v: Any) -> str:
    """How an action prints its value (Go's fmt.Print, "<no value>" for no value)."""
    if v is MISSING:
        return "<no value>"
    return format_v(v)


def format_v(v: Any) -> str:
    """Go's %v."""
    if v is None or v is MISSING:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float_g(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple):
        return "[" + " ".join(format_v(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{format_v(k)}:{format_v(v[k])}"
                                 for k in sorted(v, key=_sort_key)) + "]"
    if isinstance(v, Struct):
        return "&{" + " ".join(format_v(x) for x in v.marshal().values()) + "}"
    return str(v)


def format_float_g(x: float, upper: bool = False) -> str:
    """Go's %v (and %g) of a float64: the shortest digits that read back the same, in
    exponent form when the exponent is below -4 or 6 and above (strconv's 'g' with
    precision -1): 123456, 1.234567e+06, 1e-05."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign = "-" if x < 0 else ""
    digits, point = _decimal_digits(repr(abs(x)))
    nd = len(digits)
    exp = point - 1
    if exp < -4 or exp >= 6:
        body = digits[0] + ("." + digits[1:] if nd > 1 else "")
        e = "E" if upper else "e"
        return f"{sign}{body}{e}{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= nd:
        return f"{sign}{digits}{'0' * (point - nd)}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _decimal_digits(text: str) -> tuple[str, int]:
    """Python's shortest repr of a positive float as (digits, decimal point position):
    1234.5 -> ("12345", 4), 1e-07 -> ("1", -6)."""
    mantissa, _, exp = text.lower().partition("e")
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    lead = len(whole + frac) - len((whole + frac).lstrip("0"))
    point = len(whole) - lead + (int(exp) if exp else 0)
    digits = digits.rstrip("0") or "0"
    return digits, point


def go_quote(s: str) -> str:
    """Go's strconv.Quote: a double-quoted string with Go escapes (bytes that are not
    UTF-8, kept by Python as surrogates, as \\xNN)."""
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                        "\t": "\\t", "\v": "\\v"}[c])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c.isprintable():
            out.append(c)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def sprint(args: list[Any]) -> str:
    """Go's fmt.Sprint: spaces between operands when neither is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_v(a))
    return "".join(out)


def sprintln(args: list[Any]) -> str:
    return " ".join(format_v(a) for a in args) + "\n"


def _digit(c: str) -> bool:
    """An ASCII digit, as Go's lexer and fmt read one (str.isdigit takes '¹' too)."""
    return "0" <= c <= "9"


def sprintf(fmt: str, args: list[Any]) -> str:
    """Go's fmt.Sprintf, for the verbs templates use (v s q d x X o O b c U e E f F g G
    t T) with flags (- + # 0 space), width and precision (also *), and Go's reports
    of what does not fit (%!d(string=x), %!v(MISSING), %!(EXTRA ...))."""
    out: list[str] = []
    n = len(fmt)
    i = 0
    argi = 0
    reordered = False
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        flags = set()
        while i < n and fmt[i] in "-+# 0":
            flags.add(fmt[i])
            i += 1
        bad_index = False
        if i < n and fmt[i] == "[":
            close = fmt.find("]", i)
            index = fmt[i + 1:close] if close > 0 else ""
            reordered = True
            if index and all(map(_digit, index)) and len(index) < 8 and \
                    1 <= int(index) <= len(args):
                argi = int(index) - 1
            else:
                bad_index = True
            i = close + 1 if close > 0 else i + 1
        width: int | None = None
        if i < n and fmt[i] == "*":
            i += 1
            if argi < len(args) and isinstance(args[argi], int) and \
                    not isinstance(args[argi], bool) and abs(args[argi]) <= MAX_WIDTH:
                width = args[argi]
                if width < 0:
                    flags.add("-")
                    width = -width
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        else:
            start = i
            while i < n and _digit(fmt[i]):
                i += 1
            if i > start:
                width = int(fmt[start:i]) if i - start <= 7 else MAX_WIDTH + 1
                if width > MAX_WIDTH:
                    out.append("%!(BADWIDTH)")
                    width = None
        prec: int | None = None
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                i += 1
                if argi < len(args) and isinstance(args[argi], int) and \
                        not isinstance(args[argi], bool) and 0 <= args[argi] <= MAX_WIDTH:
                    prec = args[argi]
                else:
                    out.append("%!(BADPREC)")
                argi += 1
            else:
                start = i
                while i < n and _digit(fmt[i]):
                    i += 1
                prec = int(fmt[start:i]) if start < i <= start + 7 else \
                    (0 if start == i else MAX_WIDTH + 1)
                if prec > MAX_WIDTH:
                    out.append("%!(BADPREC)")
                    prec = None
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if bad_index:
            out.append(f"%!{verb}(BADINDEX)")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_format_one(verb, arg, flags, width, prec))
    if not reordered and argi < len(args):
        extra = ", ".join("<nil>" if a is None else f"{type_name(a)}={format_v(a)}"
                          for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(text: str, flags: set[str], width: int | None, zero_ok: bool = False) -> str:
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text + " " * (width - len(text))
    if zero_ok and "0" in flags:
        sign = text[:1] if text[:1] in "+- " else ""
        return sign + "0" * (width - len(text)) + text[len(sign):]
    return " " * (width - len(text)) + text


def _bad(verb: str, arg: Any) -> str:
    if arg is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(arg)}={format_v(arg)})"


def _format_one(verb: str, arg: Any, flags: set[str], width: int | None,
                prec: int | None) -> str:
    if verb == "T":
        return _pad(type_name(arg), flags, width)
    if verb == "v" and "#" in flags:
        return _pad(go_quote(arg) if isinstance(arg, str) else format_v(arg), flags, width)
    if arg is None:
        return _pad("<nil>", flags, width) if verb == "v" else _bad(verb, arg)
    if isinstance(arg, list | tuple):
        return _pad("[" + " ".join(_format_one(verb, x, flags - {"-"}, None, prec)
                                   for x in arg) + "]", flags, width)
    if isinstance(arg, dict):
        pairs = (f"{_format_one(verb, k, flags, None, prec)}:"
                 f"{_format_one(verb, arg[k], flags, None, prec)}"
                 for k in sorted(arg, key=_sort_key))
        return _pad("map[" + " ".join(pairs) + "]", flags, width)
    if isinstance(arg, bool):
        if verb in "tv":
            return _pad("true" if arg else "false", flags, width)
        return _bad(verb, arg)
    if isinstance(arg, int):
        return _format_int(verb, arg, flags, width, prec)
    if isinstance(arg, float):
        return _format_float(verb, arg, flags, width, prec)
    if isinstance(arg, str):
        return _format_str(verb, arg, flags, width, prec)
    if verb == "v":
        return _pad(format_v(arg), flags, width)
    return _bad(verb, arg)


def _format_int(verb: str, n: int, flags: set[str], width: int | None,
                prec: int | None) -> str:
    if verb == "c":
        return _pad(chr(n) if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF
                    else "\ufffd", flags, width)
    if verb == "q":
        c = chr(n) if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else "\ufffd"
        body = go_quote(c)[1:-1].replace("\\\"", '"')
        return _pad("'" + ("\\'" if c == "'" else body) + "'", flags, width)
    if verb == "U":
        text = f"U+{n:04X}" if n >= 0 else f"-U+{-n:04X}"
        if "#" in flags and 0 <= n <= 0x10FFFF and chr(n).isprintable():
            text += f" '{chr(n)}'"
        return _pad(text, flags, width)
    spec = {"d": "d", "v": "d", "x": "x", "X": "X", "o": "o", "O": "o", "b": "b"}
    if verb not in spec:
        return _bad(verb, n)
    magnitude = abs(n)
    digits = format(magnitude, spec[verb])
    if prec is not None:
        digits = "" if prec == 0 and magnitude == 0 else digits.rjust(prec, "0")
    prefix = ""
    if "#" in flags:
        prefix = {"x": "0x", "X": "0X", "o": "0", "b": "0b"}.get(verb, "")
        if verb == "o" and digits.startswith("0"):
            prefix = ""
    if verb == "O":
        prefix = "0o"
    sign = "-" if n < 0 else "+" if "+" in flags else " " if " " in flags else ""
    text = sign + prefix + digits
    if prec is None and width is not None and "0" in flags and "-" not in flags and \
            len(text) < width:
        return sign + prefix + digits.rjust(width - len(sign) - len(prefix), "0")
    return _pad(text, flags, width)


def _format_float(verb: str, x: float, flags: set[str], width: int | None,
                  prec: int | None) -> str:
    if verb not in "eEfFgGv":
        return _bad(verb, x)
    if math.isnan(x) or math.isinf(x):
        text = "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
        if " " in flags and "+" not in flags and text[0] in "+N":
            text = " " + text.lstrip("+")
        elif "+" in flags and text == "NaN":
            text = "+NaN"
        return _pad(text, flags, width)
    if verb in "gGv" and prec is None:
        text = format_float_g(x, upper=verb == "G")
    else:
        spec = {"v": "g", "F": "f"}.get(verb, verb)
        text = format(x, f"{'#' if '#' in flags else ''}.{6 if prec is None else prec}{spec}")
    if not text.startswith("-"):
        if "+" in flags:
            text = "+" + text
        elif " " in flags:
            text = " " + text
    return _pad(text, flags, width, zero_ok=True)


def _format_str(verb: str, s: str, flags: set[str], width: int | None,
                prec: int | None) -> str:
    if prec is not None and verb in "sqv":
        s = s[:prec]
    if verb in "sv":
        return _pad(s, flags, width)
    if verb == "q":
        if "#" in flags and "`" not in s and all(c.isprintable() or c == "\t" for c in s):
            return _pad(f"`{s}`", flags, width)
        return _pad(go_quote(s), flags, width)
    if verb in "xX":
        data = s.encode("utf-8", "surrogateescape")
        if prec is not None:
            data = data[:prec]
        sep = " " if " " in flags else ""
        parts = [(("0x" if verb == "x" else "0X") if "#" in flags else "") +
                 (f"{b:02x}" if verb == "x" else f"{b:02X}") for b in data]
        if sep or "#" not in flags:
            text = sep.join(parts)
        else:
            text = parts[0] + "".join(p[2:] for p in parts[1:]) if parts else ""
        return _pad(text, flags, width)
    return _bad(verb, s)


# ------------------------------------------------------------------------ functions

def _index(item: Any, *indexes: Any) -> Any:
    """Go's index. A map's missing key gives its element type's zero value: "" for a map
    of strings (labels, options), nil otherwise. A string's element is a byte."""
    for index in indexes:
        if item is MISSING or item is None:
            raise _CallError("index of untyped nil")
        if isinstance(item, dict):
            if index is None:
                raise _CallError("value is nil; should be of type string")
            if index in item:
                item = item[index]
            else:
                item = "" if all(isinstance(v, str) for v in item.values()) else None
            continue
        if not isinstance(item, list | tuple | str):
            raise _CallError(f"can't index item of type {type_name(item)}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise _CallError(f"cannot index slice/array with type {type_name(index)}")
        sequence = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        if not 0 <= index < len(sequence):
            raise _CallError(f"index out of range: {index}")
        item = sequence[index]
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is MISSING or item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, list | tuple | str):
        raise _CallError(f"can't slice item of type {type_name(item)}")
    if isinstance(item, str) and len(indexes) == 3:
        raise _CallError("cannot 3-index slice a string")
    size = len(item.encode("utf-8", "surrogateescape")) if isinstance(item, str) else len(item)
    bounds = [0, size]
    for n, index in enumerate(indexes):
        if not isinstance(index, int) or isinstance(index, bool):
            raise _CallError(f"cannot index slice/array with type {type_name(index)}")
        if not 0 <= index <= size:
            raise _CallError(f"index out of range: {index}")
        if n < 2:
            bounds[n] = index
    if bounds[0] > bounds[1]:
        raise _CallError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and indexes[2] < bounds[1]:
        raise _CallError(f"invalid slice index: {bounds[1]} > {indexes[2]}")
    if isinstance(item, str):
        data = item.encode("utf-8", "surrogateescape")[bounds[0]:bounds[1]]
        return data.decode("utf-8", "surrogateescape")
    return list(item[bounds[0]:bounds[1]])


def _len(item: Any) -> int:
    if item is MISSING or item is None:
        raise _CallError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogateescape"))
    if isinstance(item, list | tuple | dict):
        return len(item)
    raise _CallError(f"len of type {type_name(item)}")


def _kind(v: Any) -> str:
    if v is None or v is MISSING:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise _CallError("missing argument for comparison")
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if k1 != "nil" and k2 != "nil":
                raise _CallError("incompatible types for comparison")
            continue
        if k1 == "other":
            if not isinstance(first, type(other)) and not isinstance(other, type(first)):
                raise _CallError("incompatible types for comparison")
            if isinstance(first, list | dict | Struct):
                raise _CallError(f"non-comparable type {format_v(first)}: "
                                 f"{type_name(first)}")
        if k1 == "nil" or first == other:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _less(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka not in ("int", "float", "string") or kb not in ("int", "float", "string"):
        raise _CallError("invalid type for comparison")
    if ka != kb:
        raise _CallError("incompatible types for comparison")
    return bool(a < b)


def _html(*args: Any) -> str:
    s = sprint(list(args))
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&#34;").replace("\0", "\ufffd"))


def _js(*args: Any) -> str:
    out = []
    for c in sprint(list(args)):
        if c in "\\'\"":
            out.append("\\" + c)
        elif c in "<>&=" or ord(c) < 0x20 or (ord(c) >= 0x80 and not c.isprintable()):
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    out = []
    for byte in sprint(list(args)).encode("utf-8", "surrogateescape"):
        c = chr(byte)
        if c.isascii() and (c.isalnum() or c in "-_.~"):
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _call(fn: Any, *args: Any) -> Any:
    raise _CallError(f"non-function {format_v(fn)} of type {type_name(fn)}")


def to_json(v: Any) -> str:
    """Docker's json function: Go's encoding, HTML characters left as they are."""
    def plain(x: Any) -> Any:
        if x is MISSING:
            return None
        if isinstance(x, Struct):
            return {k: plain(v) for k, v in x.marshal().items()}
        if isinstance(x, dict):
            return {plain(str(k)): plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(i) for i in x]
        if isinstance(x, float):
            if not math.isfinite(x):
                raise _CallError(f"json: unsupported value: {format_float_g(x)}")
            if x == int(x) and abs(x) < 1e21:
                return int(x)
        if isinstance(x, str):
            return x.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return x

    text = json.dumps(plain(v), ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _title(s: str) -> str:
    out = []
    prev = " "
    for c in s:
        boundary = not (prev.isalnum() or prev == "_") if prev.isascii() else prev.isspace()
        out.append(c.upper() if boundary and len(c.upper()) == 1 else c)
        prev = c
    return "".join(out)


def _split(s: str, sep: str) -> list[str]:
    if sep == "":
        return list(s)
    return s.split(sep)


def _case(s: str, upper: bool) -> str:
    return "".join(c2 if len(c2 := (c.upper() if upper else c.lower())) == 1 else c for c in s)


def _pad_space(s: str, prefix: int, suffix: int) -> str:
    if s == "":
        return s
    if prefix < 0 or suffix < 0:
        raise _CallError("strings: negative Repeat count")
    if prefix + suffix > MAX_OUTPUT:
        raise _CallError("strings: Repeat output length overflow")
    return " " * prefix + s + " " * suffix


def _truncate(s: str, length: int) -> str:
    if len(s) < length:
        return s
    if length < 0:
        raise _CallError(f"runtime error: slice bounds out of range [:{length}]")
    return s[:length]


FUNCS: dict[str, Func] = {
    "not": Func(lambda v: not is_true(v), ("any",)),
    "len": Func(_len, ("value",)),
    "index": Func(_index, ("value",), "any"),
    "slice": Func(_slice, ("value",), "int"),
    "print": Func(lambda *a: sprint(list(a)), (), "any"),
    "println": Func(lambda *a: sprintln(list(a)), (), "any"),
    "printf": Func(lambda f, *a: sprintf(f, list(a)), ("str",), "any"),
    "html": Func(_html, (), "any"),
    "js": Func(_js, (), "any"),
    "urlquery": Func(_urlquery, (), "any"),
    "call": Func(_call, ("any",), "any"),
    "eq": Func(_eq, ("value",), "value"),
    "ne": Func(_ne, ("value", "value")),
    "lt": Func(_less, ("any", "any")),
    "le": Func(lambda a, b: _less(a, b) or _eq(a, b), ("any", "any")),
    "gt": Func(lambda a, b: not _less(a, b) and not _eq(a, b), ("any", "any")),
    "ge": Func(lambda a, b: not _less(a, b), ("any", "any")),
    # Docker's (github.com/docker/cli/templates)
    "json": Func(to_json, ("any",)),
    "split": Func(_split, ("str", "str")),
    "join": Func(lambda items, sep: sep.join(items), ("strlist", "str")),
    "title": Func(_title, ("str",)),
    "lower": Func(lambda s: _case(s, False), ("str",)),
    "upper": Func(lambda s: _case(s, True), ("str",)),
    "pad": Func(_pad_space, ("str", "int", "int")),
    "truncate": Func(_truncate, ("str", "int")),
}

# Docker's table headers: these functions leave the header text as it is.
HEADER_FUNCS: dict[str, Func] = {
    "json": Func(lambda v: v, ("str",)),
    "split": Func(lambda v, _sep: v, ("str", "str")),
    "join": Func(lambda v, _sep: v, ("str", "str")),
    "title": Func(lambda v: v, ("str",)),
    "lower": Func(lambda v: v, ("str",)),
    "upper": Func(lambda v: v, ("str",)),
    "truncate": Func(lambda v, _n: v, ("str", "int")),
}


__all__ = ["FUNCS", "HEADER_FUNCS", "MISSING", "Func", "Method", "Struct", "Template",
           "TemplateError", "format_v", "go_quote", "parse", "print_value", "sprintf",
           "to_json"]
