"""Rule templates: ``templates:`` with ``${args.NAME}``, ``use:`` and ``args:`` in a rule; expanded at
load, every problem on the line where its author wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import FILE, load
from watchdogd.cli import main
from watchdogd.config import load_config_text

HEAD = """\
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090}
templates:
  error-ratio:
    args: [job]
    rule:
      source: prom
      query: 'sum(rate(http_requests_total{job="${args.job}",code=~"5.."}[1m]))'
      condition: "> 0.05"
      for: 5m
      action: rollback
  slow:
    args: {job: null, seconds: 1.0}
    rule:
      source: prom
      query: 'p99{job="${args.job}"}'
      condition: "> ${args.seconds}"
      for: 2m
services:
  api:
    container: api
    rules:
"""


def rules(text: str, tmp_path: Path) -> list[dict[str, object]]:
    config = load_config_text(HEAD + text, FILE, tmp_path)
    return [r.model_dump(by_alias=True) for r in config.services["api"].rules]


def test_a_template_is_expanded_with_its_args(tmp_path: Path) -> None:
    got = rules(
        "      - {name: api-errors, use: error-ratio, args: {job: api}}\n"
        "      - {name: worker-errors, use: error-ratio, args: {job: worker}, for: 1m}\n",
        tmp_path,
    )
    assert got[0]["query"] == 'sum(rate(http_requests_total{job="api",code=~"5.."}[1m]))'
    assert (got[0]["for"], got[0]["action"], got[0]["name"]) == ("5m", "rollback", "api-errors")
    assert 'job="worker"' in str(got[1]["query"])
    assert got[1]["for"] == "1m"  # a key written in the rule wins over the template's


def test_defaults_and_numbers_inside_text(tmp_path: Path) -> None:
    config = load_config_text(
        HEAD + "      - {name: a, use: slow, args: {job: api}}\n"
        "      - {name: b, use: slow, args: {job: api, seconds: 2.5}}\n",
        FILE,
        tmp_path,
    )
    a, b = config.services["api"].rules
    assert (a.condition.threshold, b.condition.threshold) == (1.0, 2.5)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "      - {name: a, use: error-ratios, args: {job: api}}\n",
            f"{FILE}:23: services.api.rules[0].use: no template 'error-ratios'"
            " (templates: error-ratio, slow); did you mean 'error-ratio'?",
        ),
        (
            "      - {name: a, use: error-ratio}\n",
            f"{FILE}:23: services.api.rules[0].use: template 'error-ratio' (line 4) needs args: job",
        ),
        (
            "      - name: a\n        use: error-ratio\n        args: {job: api, jobb: x}\n",
            f"{FILE}:25: services.api.rules[0].args.jobb: template 'error-ratio' (line 4) has no argument"
            " 'jobb' (its arguments: job)",
        ),
    ],
)
def test_a_use_mistake_points_at_the_use(rule: str, message: str, tmp_path: Path) -> None:
    assert load(HEAD + rule, tmp_path) == [message]


def test_a_problem_from_the_template_points_at_the_template_and_names_the_use(tmp_path: Path) -> None:
    bad = HEAD.replace("      for: 2m\n", "      for: soon\n")
    problems = load(bad + "      - name: a\n        use: slow\n        args: {job: api}\n", tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{FILE}:18: services.api.rules[0].for: ")
    assert problems[0].endswith("(in template 'slow', used at line 24)")


def test_an_unknown_placeholder_points_at_the_template(tmp_path: Path) -> None:
    bad = HEAD.replace('job="${args.job}",code', 'job="${args.jbo}",code')
    problems = load(bad + "      - {name: a, use: error-ratio, args: {job: api}}\n", tmp_path)
    assert f"{FILE}:8: templates.error-ratio.rule.query: unknown argument 'jbo' (declared: job)" in problems


def test_check_prints_rules_as_expanded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "      - {name: api-errors, use: error-ratio, args: {job: api}}\n")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rule api-errors" in out
    assert 'job="api"' in out and "${args" not in out
