"""The Go template evaluator behind --format: Go's text/template semantics and Docker's
functions, table-driven, and properties that no template text or data makes it fail
with anything but a one-line TemplateError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portway.core.gotemplate import (
    HEADER_FUNCS,
    MISSING,
    Method,
    Struct,
    Template,
    TemplateError,
    format_float_g,
    go_quote,
    print_value,
    sprintf,
    to_json,
)

INSPECT = {
    "Name": "/web", "Id": "c0ffee" * 10 + "abcd",
    "State": {"Status": "running", "Running": True, "ExitCode": 0, "Pid": 42},
    "Config": {"Labels": {"com.example.team": "web", "tier": "front"}, "Cmd": ["sleep", "9"]},
    "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                   "CapAdd": None, "NetworkMode": "app"},
    "NetworkSettings": {
        "IPAddress": "", "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
        "Networks": {
            "app": {"IPAddress": "10.0.0.2", "Aliases": ["www", "api"], "IPAMConfig": None},
            "back": {"IPAddress": "10.1.0.2", "Aliases": None,
                     "IPAMConfig": {"IPv4Address": "10.1.0.2"}}}},
}


def run(text: str, data: Any = None, strict: bool = False) -> str:
    return Template(text).execute(data, strict=strict)


@pytest.mark.parametrize(("text", "data", "expected"), [
    ("plain text", None, "plain text"),
    ("{{.Name}}", {"Name": "web"}, "web"),
    ("{{.NetworkSettings.Networks.app.IPAddress}}", INSPECT, "10.0.0.2"),
    ('{{index .Config.Labels "tier"}}', INSPECT, "front"),
    ('{{index .Config.Labels "com.example.team"}}', INSPECT, "web"),
    ('{{index .Config.Labels "missing"}}', INSPECT, ""),  # a map of strings: ""
    ('{{index .NetworkSettings.Ports "80/tcp" 0 "HostPort"}}', INSPECT, "8080"),
    ("{{index . 1}}", ["a", "b"], "b"),
    ('{{index "abc" 1}}', None, "98"),  # a string's element is a byte
    ("{{json .State}}", INSPECT,
     '{"Status":"running","Running":true,"ExitCode":0,"Pid":42}'),
    ("{{json .HostConfig.PortBindings}}", INSPECT,
     '{"80/tcp":[{"HostIp":"","HostPort":"8080"}]}'),
    ("{{json .}}", {"a": "<&>", "b": None, "c": 1.0}, '{"a":"<&>","b":null,"c":1}'),
    ("{{json .Missing}}", {}, "null"),
    ("{{range .}}{{.}},{{end}}", [1, 2, 3], "1,2,3,"),
    ("{{range $i, $e := .}}{{$i}}={{$e}} {{end}}", ["a", "b"], "0=a 1=b "),
    ("{{range $k, $v := .}}{{$k}}:{{$v}};{{end}}", {"b": 2, "a": 1}, "a:1;b:2;"),
    ("{{range $net, $e := .NetworkSettings.Networks}}{{$net}}={{$e.IPAddress}} {{end}}",
     INSPECT, "app=10.0.0.2 back=10.1.0.2 "),
    ("{{range .}}x{{else}}empty{{end}}", [], "empty"),
    ("{{range .Missing}}x{{else}}none{{end}}", {}, "none"),
    ("{{range 3}}{{.}}{{end}}", None, "012"),
    ("{{range .}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}", [1, 2, 3], "1"),
    ("{{range .}}{{if eq . 2}}{{continue}}{{end}}{{.}}{{end}}", [1, 2, 3], "13"),
    ("{{range .}}{{$.X}}{{end}}", {"X": "!", "_": 0}, "!!"),  # $ is the data, in a range
    ("{{if .A}}a{{else if .B}}b{{else}}c{{end}}", {"A": 0, "B": "x"}, "b"),
    ("{{if .A}}a{{else if .B}}b{{else}}c{{end}}", {"A": "", "B": []}, "c"),
    ("{{if and .A .B}}both{{end}}", {"A": 1, "B": [1]}, "both"),
    ("{{with .A}}{{.}}{{else}}none{{end}}", {"A": "x"}, "x"),
    ("{{with .A}}{{.}}{{else with .B}}{{.}}b{{else}}none{{end}}", {"B": 1}, "1b"),
    ("{{println .A}}", {"A": "x"}, "x\n"),
    ('{{print 1 2 "a" 3}}', None, "1 2a3"),
    ('{{join .L ", "}}', {"L": ["a", "b"]}, "a, b"),
    ('{{join .NetworkSettings.Networks.app.Aliases ","}}', INSPECT, "www,api"),
    ('{{split "a,b" ","}}', None, "[a b]"),
    ('{{index (split "a:b" ":") 1}}', None, "b"),
    ("{{upper .S}}/{{lower .S}}", {"S": "Web-1"}, "WEB-1/web-1"),
    ('{{title "hello wide world"}}', None, "Hello Wide World"),
    ('{{pad "x" 1 2}}|{{pad "" 1 2}}', None, " x  |"),
    ('{{truncate "hello" 3}}|{{truncate "hi" 3}}', None, "hel|hi"),
    ("{{len .L}} {{len .M}} {{len .S}}", {"L": [1, 2], "M": {"a": 1}, "S": "héllo"}, "2 1 6"),
    ('{{slice "hello" 1 3}} {{slice .L 1}}', {"L": [1, 2, 3]}, "el [2 3]"),
    ('{{eq .A "x" "y"}} {{eq .A "z"}} {{ne 1 2}}', {"A": "y"}, "true false true"),
    ("{{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 2 3}}", None, "true true false false"),
    ('{{and 1 0 2}} {{or 0 "" "z"}} {{or 0 ""}} {{not 0}}', None, "0 z  true"),
    ('{{eq .Missing "x"}}', {}, "false"),
    ('{{html "<a href=\'x\'>&"}}', None, "&lt;a href=&#39;x&#39;&gt;&amp;"),
    ('{{urlquery "a b&c/é"}}', None, "a+b%26c%2F%C3%A9"),
    ('{{js "a\'b<c>"}}', None, "a\\'b\\u003Cc\\u003E"),
    ("{{.S | upper}}", {"S": "x"}, "X"),
    ('{{"x" | printf "%s-%s" "a"}}', None, "a-x"),
    ('{{.State | json}}', {"State": {"A": 1}}, '{"A":1}'),
    ("{{(index . 0).Name}}", [{"Name": "n"}], "n"),
    ("{{$x := 1}}{{$x = 2}}{{$x}}", None, "2"),
    ("{{$n := .Name}}{{range .L}}{{$n}}{{.}}{{end}}", {"Name": "a", "L": [1, 2]}, "a1a2"),
    ("{{/* a comment */}}x{{- /* trimmed */ -}}  y", None, "xy"),
    ("a  {{- .X -}}  b", {"X": "X"}, "aXb"),
    ("{{- .X}}", {"X": 1}, "1"),
    ("a {{.X}} b", {"X": -1}, "a -1 b"),
    ("{{1.5}} {{1e6}} {{0x10}} {{'a'}} {{017}} {{1_000}} {{-2}}", None,
     "1.5 1e+06 16 97 15 1000 -2"),
    ("{{.L}} {{.M}} {{.N}} {{true}}", {"L": ["a", 1], "M": {"b": 2, "a": None}, "N": 2.5},
     "[a 1] map[a:<nil> b:2] 2.5 true"),
    ("{{.Missing}}", {}, "<no value>"),
    ("{{.A.B.C}}", {"A": {}}, "<no value>"),
    ("{{.Null}}", {"Null": None}, "<no value>"),  # Go digs nil out of the interface
    ("{{print .Null}}", {"Null": None}, "<nil>"),
    ('{{define "t"}}[{{.}}]{{end}}{{template "t" .A}}{{template "t"}}', {"A": 1},
     "[1][<no value>]"),
    ('{{block "b" .}}B{{.}}{{end}}', 5, "B5"),
    ("{{`raw\\n`}}", None, "raw\\n"),
    ('{{"esc\\t\\u00e9\\x41"}}', None, "esc\té\x41"),
    ("{{.NetworkSettings.Networks.missing.IPAddress}}", INSPECT, "<no value>"),
])
def test_executes_as_go_does(text: str, data: Any, expected: str) -> None:
    assert run(text, data) == expected


def test_docker_container_context() -> None:
    labels = {"a": "1"}
    ctx = Struct("*formatter.ContainerContext", {
        "ID": "abc", "Names": "web",
        "Label": Method(lambda k: labels.get(k, ""), ("str",))})
    assert run('{{.ID}} {{.Names}} {{.Label "a"}}{{.Label "b"}}', ctx) == "abc web 1"
    assert run('{{"a" | .Label}}', ctx) == "1"
    assert run("{{json .}}", ctx) == '{"ID":"abc","Names":"web"}'
    with pytest.raises(TemplateError) as err:
        run("{{.Nope}}", ctx)
    assert err.value.message == ('template: :1:2: executing "" at <.Nope>: can\'t evaluate '
                                 "field Nope in type *formatter.ContainerContext")
    with pytest.raises(TemplateError, match="wrong number of args for Label: want 1 got 0"):
        run("{{.Label}}", ctx)
    with pytest.raises(TemplateError, match="has arguments but cannot be invoked"):
        run('{{.ID "x"}}', ctx)
    # A table's header: the column names, Docker's functions leave them as they are.
    header = Struct("formatter.SubHeaderContext", {"ID": "CONTAINER ID"}, lenient=True)
    assert Template("{{upper .ID}} {{truncate .ID 3}} {{.Size}}").execute(
        header, funcs=HEADER_FUNCS) == "CONTAINER ID CONTAINER ID <no value>"


def test_strict_inspect_fields() -> None:
    # A struct's (inspect's) missing field is an error, as Docker's inspect reports it;
    # a map's missing key (networks by name, labels) is "<no value>".
    assert run("{{.NetworkSettings.Networks.nope}}", INSPECT, strict=True) == "<no value>"
    assert run("{{.Config.Labels.nope}}", INSPECT, strict=True) == "<no value>"
    with pytest.raises(TemplateError) as err:
        run("{{.NetworkSettings.IPAdress}}", INSPECT, strict=True)
    assert err.value.message == ('template: :1:2: executing "" at '
                                 '<.NetworkSettings.IPAdress>: map has no entry for key '
                                 '"IPAdress"')
    assert run("{{.NetworkSettings.IPAdress}}", INSPECT) == "<no value>"


@pytest.mark.parametrize(("text", "message"), [
    ("{{.Name", "template: :1: unclosed action"),
    ("{{end}}", "template: :1: unexpected {{end}}"),
    ("{{else}}", "template: :1: unexpected {{else}}"),
    ("{{if .X}}", "template: :1: unexpected EOF"),
    ("{{range .}}{{else}}{{else}}{{end}}", "expected end; found {{else}}"),
    ("{{nofunc .}}", 'template: :1: function "nofunc" not defined'),
    ("{{$x}}", 'template: :1: undefined variable "$x"'),
    ("{{.X | 1}}", "non executable command in pipeline stage 2"),
    ("{{}}", "missing value for command"),
    ("{{ | upper}}", 'unexpected "|" in command'),
    ('{{"unterminated}}', "unterminated quoted string"),
    ("{{`raw}}", "unterminated raw quoted string"),
    ("{{break}}", "{{break}} outside {{range}}"),
    ("{{range $a, $b, $c := .}}{{end}}", "too many declarations in range"),
    ("{{$a, $b := .}}", "too many declarations in command"),
    ("{{(1}}", "unclosed left paren"),
    ("{{1)}}", "unexpected right paren"),
    ("{{.X=1}}", "bad character U+003D '='"),
    ("{{3x}}", "bad number syntax"),
    ("{{08}}", "illegal number syntax"),
    ("{{1i}}", "bad number syntax"),
    ("{{'ab'}}", "malformed character constant"),
    ('{{"\\q"}}', "invalid syntax"),
    ("{{/* open", "unclosed comment"),
    ("{{/* x */ .X}}", "comment ends before closing delimiter"),
    ("{{true.X}}", 'unexpected . after term "true"'),
    ("{{template .X}}", "unexpected"),
    ("{{define \"x\"}}", "unexpected EOF"),
    ("a\n{{.X ~}}", "template: :2: unexpected \"~\" in operand"),
    ("{{if}}{{end}}", "missing value for if"),
    ("(" * 3 + "{{" + "(" * 150 + "1" + ")" * 150 + "}}", "nested more than 100 deep"),
])
def test_bad_templates_fail_in_one_line(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        Template(text)
    assert message in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize(("text", "data", "message"), [
    ("{{eq 1 \"a\"}}", None, "error calling eq: incompatible types for comparison"),
    ("{{lt true false}}", None, "invalid type for comparison"),
    ("{{index . 5}}", [1], "error calling index: index out of range: 5"),
    ("{{index .M 1}}", {"M": None}, "index of untyped nil"),
    ("{{len 3}}", None, "error calling len: len of type int"),
    ("{{upper 3}}", None, "wrong type for value; expected string; got int"),
    ("{{upper .Missing}}", {}, "invalid value; expected string"),
    ("{{join .L \",\"}}", {"L": [1]}, "expected []string; got []interface {}"),
    ("{{truncate \"ab\" -1}}", None, "error calling truncate: runtime error"),
    ("{{.X.Y}}", {"X": "s"}, "can't evaluate field Y in type string"),
    ("{{.X.Y}}", {"X": None}, "nil pointer evaluating interface {}.Y"),
    ("{{.X 1}}", {"X": 1}, "X is not a method but has arguments"),
    ("{{1 2}}", None, "can't give argument to non-function 1"),
    ("{{nil}}", None, "nil is not a command"),
    ("{{range .}}{{end}}", "str", "range can't iterate over str"),
    ("{{range $i, $e := 3}}{{end}}", None, "can't use 3 to iterate over more than one"),
    ('{{template "nope"}}', None, 'template "nope" not defined'),
    ('{{define "r"}}{{template "r"}}{{end}}{{template "r"}}', None,
     "exceeded maximum template depth"),
    ("{{slice . 2 1}}", [1, 2, 3], "invalid slice index: 2 > 1"),
    ("{{call .}}", None, "error calling call"),
])
def test_run_time_errors(text: str, data: Any, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        run(text, data)
    assert message in err.value.message
    assert err.value.message.startswith("template: ")
    assert "\n" not in err.value.message


def test_partial_output_on_failure() -> None:
    with pytest.raises(TemplateError) as err:
        run("before {{.X.Y}} after", {"X": 3})
    assert err.value.partial == "before "


def test_the_loop_ceiling() -> None:
    with pytest.raises(TemplateError, match="steps"):
        run("{{range 100000000}}{{end}}")


@pytest.mark.parametrize(("fmt", "args", "expected"), [
    ("%s-%d-%5.2f|%-4s|%q", ["a", 3, 3.14159, "b", "c"], 'a-3- 3.14|b   |"c"'),
    ("%v %v %v %v", [None, True, [1, "a"], {"k": "v"}], "<nil> true [1 a] map[k:v]"),
    ("%x %X %o %O %b %#x %#o", [255, 255, 8, 8, 5, 255, 8], "ff FF 10 0o10 101 0xff 010"),
    ("%05d|%-5d|%+d|% d|%.3d", [42, 42, 42, 42, 7], "00042|42   |+42| 42|007"),
    ("%c%c %q %U %#U", [72, 105, 97, 0x1F600, 65], "Hi 'a' U+1F600 U+0041 'A'"),
    ("%e %E %.2g %g %G", [1234.5678, 0.00012, 1234.5678, 1e21, 1e-7],
     "1.234568e+03 1.200000E-04 1.2e+03 1e+21 1E-07"),
    ("%t %v", [False, 1.0], "false 1"),
    ("%T %T %T %T %T", [1, "s", 1.5, [1], None], "int string float64 []interface {} <nil>"),
    ("%d", ["x"], "%!d(string=x)"),
    ("%s", [5], "%!s(int=5)"),
    ("%d %d", [1], "1 %!d(MISSING)"),
    ("%d", [1, 2, "x"], "1%!(EXTRA int=2, string=x)"),
    ("%!", [], "%!!(MISSING)"),
    ("%", [], "%!(NOVERB)"),
    ("100%%", [], "100%"),
    ("%z", [1], "%!z(int=1)"),
    ("%*d|%-*d|%.*f", [4, 7, 3, 7, 1, 2.25], "   7|7  |2.2"),
    ("%[2]s %[1]s", ["a", "b"], "b a"),
    ("%[9]s", ["a"], "%!s(BADINDEX)"),
    ("%99999999d", [1], "%!(BADWIDTH)1"),
    ("%x % x %#x", ["hi", "hi", "hi"], "6869 68 69 0x6869"),
    ("%.2s|%5.1s|%-3s|", ["héllo", "xyz", "é"], "hé|    x|é  |"),
    ("%#q %q", ["a`b", "tab\t"], '"a`b" "tab\\t"'),
    ("%v", [float("inf")], "+Inf"),
])
def test_printf_as_go(fmt: str, args: list[Any], expected: str) -> None:
    assert sprintf(fmt, args) == expected


@pytest.mark.parametrize(("x", "expected"), [
    (1.0, "1"), (0.5, "0.5"), (123456.0, "123456"), (1234567.0, "1.234567e+06"),
    (1e21, "1e+21"), (0.0001, "0.0001"), (0.00001, "1e-05"), (-2.5, "-2.5"),
    (1e100, "1e+100"), (123.456, "123.456"), (-0.0, "-0"),
])
def test_floats_print_as_go(x: float, expected: str) -> None:
    assert format_float_g(x) == expected


@pytest.mark.parametrize(("s", "expected"), [
    ("sleep 300", '"sleep 300"'), ('a"b\\c', '"a\\"b\\\\c"'),
    ("\n\t\x01é\x7f", '"\\n\\t\\x01é\\x7f"'),
    ("\udc80", '"\\x80"'), ("\u2028", '"\\u2028"'),
])
def test_go_quote(s: str, expected: str) -> None:
    assert go_quote(s) == expected


# ------------------------------------------------------------------------ properties

TOKENS = ["{{", "}}", "{{-", " -}}", " ", ".", ".A", ".B", ".A.B", "$", "$x", "$y", ":=", "=",
          ",", "|", "(", ")", '"s"', "`r`", "'c'", "1", "0", "-1", "2.5", "true", "nil",
          "if", "else", "end", "range", "with", "break", "continue", "define", "template",
          "block", "len", "index", "slice", "printf", "print", "println", "json", "join",
          "split", "upper", "lower", "title", "pad", "truncate", "eq", "lt", "and", "or",
          "not", "html", "js", "urlquery", "call", '"%d %s %v %q %x %5.2f %!"', "/*", "*/",
          "\n", "x", "{", "}", "\\", '"', "é", "{{/*", "*/}}"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) |
    st.floats(allow_nan=False, allow_infinity=False, width=32) |
    st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.sampled_from(["A", "B", "x", "80/tcp"]), inner, max_size=3),
    max_leaves=8)


def _try(text: str, data: Any, strict: bool = False) -> None:
    try:
        template = Template(text)
    except TemplateError as exc:
        assert exc.message.startswith("template: ") and "\n" not in exc.message
        return
    try:
        out = template.execute(data, strict=strict)
    except TemplateError as exc:
        assert exc.message.startswith("template: ") and "\n" not in exc.message
        assert isinstance(exc.partial, str)
        return
    assert isinstance(out, str)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map("".join), json_values,
       st.booleans())
def test_odd_templates_never_crash(text: str, data: Any, strict: bool) -> None:
    _try(text, data, strict)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), json_values)
def test_any_text_never_crashes(text: str, data: Any) -> None:
    _try(text, data)
    _try("{{" + text + "}}", data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda t: "{{" not in t))
def test_text_without_actions_is_itself(text: str) -> None:
    assert run(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), st.lists(json_values, max_size=4))
def test_printf_never_crashes(fmt: str, args: list[Any]) -> None:
    assert isinstance(sprintf(fmt, args), str)


def test_only_ascii_digits_are_widths_precisions_and_indexes() -> None:
    # As Go's fmt: '¹' is a digit to str.isdigit, to Go a verb like any other rune.
    assert sprintf("%¹", []) == "%!¹(MISSING)"
    assert sprintf("%[¹]d", [1]) == "%!d(BADINDEX)"
    assert sprintf("%.²f", [1.5]) == "%!²(float64=1.5)f"
    # ... and in an action, neither a number nor part of a field's name.
    with pytest.raises(TemplateError, match=r"unrecognized character in action: U\+00B9"):
        run("{{ ¹ }}")
    with pytest.raises(TemplateError, match=r"bad character U\+00B9"):
        run("{{ .a¹ }}", {"a": 1})


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_and_printing_never_crash(data: Any) -> None:
    assert isinstance(to_json(data), str)
    assert isinstance(print_value(data), str)
    assert print_value(MISSING) == "<no value>"
