"""tests/helmrender.py renders what Helm renders: a tricky template against Helm's output, written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helmfuncs import go_float
from tests.helmrender import Renderer, TemplateError, parse


def render(source: str, values: dict[str, Any]) -> str:
    root = {"Values": values, "Release": {"Name": "r"}, "Chart": {"Name": "c", "Version": "1"}}
    defines: dict[str, Any] = {}
    nodes = parse(source, defines)
    return Renderer(root, defines).render(nodes, root)


def test_renderer_subset() -> None:
    values = {"on": True, "off": False, "items": ["a", "b"], "map": {"k": [1, 2]}, "empty": ""}
    assert render("x: {{ .Release.Name }}-{{ .Chart.Name }}", values) == "x: r-c"
    assert render("a\n  {{- if .Values.on }}\n  yes\n  {{- end }}\n", values) == "a\n  yes\n"
    assert render("{{ if .Values.off }}y{{ else }}n{{ end }}", values) == "n"
    assert render("{{- range .Values.items }}\n- {{ . }}{{ $.Release.Name }}\n{{- end }}", values) == (
        "\n- ar\n- br"
    )
    assert render("m:\n  {{- toYaml .Values.map | nindent 2 }}", values) == "m:\n  k:\n  - 1\n  - 2"
    assert render('{{ .Values.empty | default "d" | quote }}', values) == '"d"'
    assert render("{{ not .Values.off }} {{ .Values.on | quote }}", values) == 'true "true"'
    # a dash beside braces trims only with a space after it: {{-3}} is the number -3
    assert render("a {{-3}} b", values) == "a -3 b"


# Helm's semantics for each line, from Go's text/template, fmt and Sprig:
# - `define` prints nothing where it stands; `include` and `template` render it with the dot
#   they are given, and `$` inside is that dot;
# - values' numbers are float64: fmt prints 1000000 as 1e+06 (strconv's shortest %g switches
#   to an exponent from 1e+06 and below 1e-04) and %d of a float64 as %!d(float64=2);
# - fmt.Sprint puts a space between two operands only when neither is a string;
# - quote is Go's %q; trunc -3 keeps the last three characters;
# - range over a map goes by sorted key, `range ... else` renders the else when empty;
# - `$x = ...` in a block assigns the outer variable; `and`/`or` return an operand.
TRICKY = """\
{{- define "t.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 10 | trimSuffix "-" }}
{{- end -}}
{{- define "t.inner" }}{{ $.a }}/{{ .z }}{{ end -}}
{{/* a comment prints nothing */}}
name: {{ include "t.name" . }} {{ template "t.name" . }}
inner: {{ include "t.inner" .Values.map }}
numbers: {{ .Values.big }} {{ .Values.odd }} {{ .Values.small }} {{ .Values.ratio }} {{ .Values.count }}
printf: {{ printf "%d" .Values.count }} {{ printf "%d-%s" (int .Values.count) "x" }} {{ printf "%s" }}
print: {{ print 1 2 "a" 3 "b" }}
quote: {{ .Values.text | quote }}
list:
{{- range $i, $v := .Values.list }}
- {{ $i }}={{ $v }}
{{- else }}
none
{{- end }}
{{- range .Values.none }}never{{ else }} (empty){{ end }}
{{- with .Values.map }}
keys:{{ range $k, $v := . }} {{ $k }}:{{ $v }}{{ end }}
{{- end }}
{{ if and .Values.on (not .Values.off) }}both{{ else if .Values.on }}on{{ else }}neither{{ end }}
{{- $x := "outer" }}{{ if .Values.on }}{{ $x = "set" }}{{ $y := "inner" }}{{ end }}
scope: {{ $x }}
or: {{ or .Values.empty .Values.zero "fallback" }} and: {{ and .Values.on .Values.zero 7 }}
yaml:
  {{- toYaml .Values.map | nindent 2 }}
sum: {{ "abc" | sha256sum | trunc 8 }} {{ "name-" | trunc -3 }}
"""

HELM_OUTPUT = """
name: abcdefghi abcdefghi
inner: x/1
numbers: 1e+06 1.234567e+06 1e-05 0.25 2
printf: %!d(float64=2) 2-x %!s(MISSING)
print: 1 2a3b
quote: "say \\"hi\\"\\n"
list:
- 0=a
- 1=b (empty)
keys: a:x z:1
both
scope: set
or: fallback and: 0
yaml:
  a: x
  z: 1
sum: ba7816bf me-
"""


def test_a_tricky_template_renders_as_helm_renders_it() -> None:
    values = {
        "nameOverride": "abcdefghi-jkl",
        "big": 1000000.0,
        "odd": 1234567.0,
        "small": 0.00001,
        "ratio": 0.25,
        "count": 2.0,
        "text": 'say "hi"\n',
        "list": ["a", "b"],
        "none": [],
        "map": {"z": 1.0, "a": "x"},
        "on": True,
        "off": False,
        "empty": "",
        "zero": 0.0,
    }
    assert render(TRICKY, values) == HELM_OUTPUT


@pytest.mark.parametrize(
    ("number", "printed"),
    [
        (0.0, "0"),
        (100000.0, "100000"),
        (123456.5, "123456.5"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (-2.5e-7, "-2.5e-07"),
        (9464.0, "9464"),
    ],
)
def test_numbers_print_as_go_prints_a_float64(number: float, printed: str) -> None:
    assert go_float(number) == printed


@pytest.mark.parametrize(
    "source",
    [
        "{{ .Values.missing }}",
        "{{ .Values.map }}",
        "{{ if .Values.on }}",
        "{{ end }}",
        '{{ include "undefined" . }}',
        "{{ nosuchfunction 1 }}",
        # Go refuses to compare a float64 of the values with an integer literal
        "{{ gt .Values.count 1 }}",
        "{{ if .Values.on }}{{ $y := 1 }}{{ end }}{{ $y }}",
        '{{ fail "refused" }}',
        '{{ required "needed" .Values.empty }}',
        "{{ .Values.on 1 }}",
    ],
)
def test_renderer_refuses_what_helm_refuses_or_prints_blank(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, {"on": True, "map": {}, "count": 2.0, "empty": ""})
