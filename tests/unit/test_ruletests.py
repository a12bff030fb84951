"""``watchdogd test-rules`` and ``watchdogd replay --series``: the rule author's offline tools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from watchdogd.cli import main
from watchdogd.errors import SeriesError
from watchdogd.series import format_series, parse_series

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TESTS = sorted((ROOT / "config" / "examples" / "tests").glob("*.test.yaml"))

CONFIG = """
sources:
  prom: {type: prometheus, url: "http://127.0.0.1:9090"}
  logs: {type: file, path: /var/log/api.log}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: error-rate
        source: prom
        query: job:errors:ratio
        condition: "> 0.05"
        for: 5m
        action: rollback
      - name: prisma
        source: logs
        pattern: PrismaClient
        over: 1m
        condition: ">= 1"
        immediate: true
        action: rollback
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "api.yaml").write_text(CONFIG)
    return tmp_path


def write_tests(folder: Path, body: str) -> Path:
    path = folder / "api.test.yaml"
    path.write_text("rule_files: [api.yaml]\ninterval: 15s\n" + body)
    return path


# --- series notation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1 2 3", [1.0, 2.0, 3.0]),
        ("0.5x2", [0.5, 0.5, 0.5]),
        ("1+2x3", [1.0, 3.0, 5.0, 7.0]),
        ("10-5x2", [10.0, 5.0, 0.0]),
        ("_ 1 _x2", [None, 1.0, None, None]),
        ("-1e3 Inf", [-1000.0, float("inf")]),
        ("", []),
    ],
)
def test_series_notation(text: str, values: list[float | None]) -> None:
    assert parse_series(text) == values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 two", "cannot read 'two'"),
        ("1+2", r"cannot read '1\+2': a step needs a count, like '1\+2x10'"),
        ("0x100000000", "longer than 1000000 values"),
        ("_x", "cannot read '_x'"),
    ],
)
def test_series_notation_errors(text: str, message: str) -> None:
    with pytest.raises(SeriesError, match=message):
        parse_series(text)


def test_format_series_folds_runs() -> None:
    assert format_series([1.0, 1.0, 1.0, None, None, 2.0]) == "1x2 _x2 2"
    assert parse_series(format_series([0.1, 0.1, None, 3.0, 3.0])) == [0.1, 0.1, None, 3.0, 3.0]


# --- test-rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_TESTS, ids=lambda p: p.name)
def test_example_rule_tests_pass(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-rules", str(path)]) == 0, capsys.readouterr().out
    assert " 0 failed" in capsys.readouterr().out


def test_every_example_config_has_rule_tests() -> None:
    configs = {p.stem for p in (ROOT / "config" / "examples").glob("*.yaml")}
    tested = {p.name.removesuffix(".test.yaml") for p in EXAMPLE_TESTS}
    assert configs <= tested


def test_passing_file_exits_0(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tests(
        config_dir,
        """
tests:
  - name: spike
    series: [{source: prom, values: "0.01x3 0.2x30"}]
    expect:
      - {rule: error-rate, at: 1m, state: pending}
      - {rule: error-rate, at: 6m, state: firing}
      - proposal_at: 6m
""",
    )
    assert main(["test-rules", "-v", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    assert "1 passed, 0 failed" in out


def test_wrong_expectation_exits_1_with_expected_got_and_timeline(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_tests(
        config_dir,
        """
tests:
  - name: spike
    series: [{source: prom, values: "0.01x3 0.2x30"}]
    expect:
      - {rule: error-rate, at: 5m, state: firing}
      - proposal_at: 5m
""",
    )
    assert main(["test-rules", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {path}: spike" in out
    assert "rule 'error-rate' at 5m: expected firing, got pending" in out
    assert "expected a rollback proposal at 5m, got one at 6m (rule 'error-rate')" in out
    # the timeline around it shows the values, the states and why the state changed
    assert "0.2  pending" in out
    assert "pending -> firing: 0.2 > 0.05, true at every evaluation for 5m (for: 5m)" in out
    assert "0 passed, 1 failed" in out


def test_immediate_log_rule_and_never(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tests(
        config_dir,
        """
tests:
  - name: one Prisma error
    series: [{rule: prisma, values: "0x4 1 0"}]
    expect:
      - {rule: prisma, at: 1m15s, state: firing}
      - proposal_at: 1m15s
  - name: quiet logs
    series: [{rule: prisma, values: "0x10"}]
    expect:
      - proposal_at: never
  - name: missing data is no verdict
    series: [{source: prom, values: "_x40"}]
    expect:
      - {rule: error-rate, at: 9m, state: no_data}
      - proposal_at: never
""",
    )
    assert main(["test-rules", str(path)]) == 0, capsys.readouterr().out


def test_expectation_naming_an_unknown_rule_fails(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_tests(
        config_dir,
        """
tests:
  - name: typo
    series: [{source: prom, values: "0x3"}]
    expect:
      - {rule: eror-rate, at: 30s, state: ok}
""",
    )
    assert main(["test-rules", str(path)]) == 1
    assert "rule 'eror-rate': no such rule in the config" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "tests:\n  - name: x\n    series: [{source: prom, values: '0.1 zz'}]\n"
            "    expect: [{proposal_at: never}]\n",
            "api.test.yaml:5: tests[0].series[0].values: cannot read 'zz'",
        ),
        (
            "tests:\n  - name: x\n    series: [{source: prom, values: '1'}]\n"
            "    expect: [{rule: a, at: 1m}]\n",
            "api.test.yaml:6: tests[0].expect[0]: expect either {rule, at, state} or {proposal_at}",
        ),
        (
            "tests:\n  - name: x\n    series: [{source: prom, values: '1'}]\n"
            "    expect: [{rule: a, at: 5 minutes, state: ok}]\n",
            "api.test.yaml:6: tests[0].expect[0].at: invalid duration '5 minutes'",
        ),
        ("tests: []\n", "api.test.yaml:3: tests: needs at least 1 item"),
        (
            "tests:\n  - name: x\n    serie: []\n",
            "api.test.yaml:5: tests[0].serie: unknown key 'serie' (did you mean 'series'?)",
        ),
    ],
)
def test_bad_test_file_exits_2_with_its_line(
    config_dir: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    path = write_tests(config_dir, body)
    assert main(["test-rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_bad_config_behind_the_test_file_exits_2(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_dir / "api.yaml").write_text(CONFIG.replace("for: 5m", "for: 5 minutes"))
    path = write_tests(
        config_dir,
        "tests:\n  - name: x\n    series: [{source: prom, values: '1'}]\n"
        "    expect: [{proposal_at: never}]\n",
    )
    assert main(["test-rules", str(path)]) == 2
    assert "api.yaml:14: services.api.rules[0].for: invalid duration '5 minutes'" in capsys.readouterr().err


def test_missing_test_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-rules", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read: No such file or directory" in capsys.readouterr().err


def test_rule_files_are_relative_to_the_test_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(ROOT / "config" / "examples", tmp_path / "examples")
    assert main(["test-rules", str(tmp_path / "examples" / "tests" / "rls-rollout.test.yaml")]) == 0


# --- replay over a file ---------------------------------------------------------------------


def test_replay_csv_prints_changes_and_would_be_rollbacks(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["timestamp,value"]
    t0 = 1_700_000_000
    for i in range(120):  # 30 minutes at 15 s; bad from 5m to 15m, and from 20m to 22m
        bad = 20 <= i < 60 or 80 <= i < 88
        rows.append(f"{t0 + i * 15},{0.2 if bad else 0.01}")
    series = config_dir / "errors.csv"
    series.write_text("\n".join(rows) + "\n")
    code = main(
        ["replay", "--config", str(config_dir / "api.yaml"), "--rule", "error-rate", "--series", str(series)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "+5m  ok -> pending" in out
    assert "+10m  pending -> firing" in out
    assert "+10m  would propose a rollback (executes at +11m unless vetoed, grace 1m)" in out
    assert "+20m  ok -> pending" in out
    assert "120 evaluations over 29m45s: 1 would-be rollbacks (one per 29m45s)" in out


def test_replay_json_with_gaps_and_rfc3339(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = [[f"2026-11-01T10:{m:02d}:{s:02d}Z", 0.3] for m in range(12) for s in (0, 15, 30, 45)]
    del points[8:12]  # a minute with no points: no data; the run goes on, the minute does not count
    series = config_dir / "errors.json"
    series.write_text(json.dumps(points))
    code = main(
        [
            "replay",
            "--config",
            str(config_dir / "api.yaml"),
            "--rule",
            "api/error-rate",
            "--series",
            str(series),
            "--clock",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2026-11-01T10:06:00Z  pending -> firing" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestamp,value\n1700000000,0.1\n1700000015,abc\n", "errors.csv:3: value 'abc' is not a number"),
        ("1700000000,0.1,7\n", "errors.csv:1: expected 'timestamp,value', got 3 columns"),
        (
            "timestamp,value\nyesterday,0.1\n",
            "errors.csv:2: timestamp 'yesterday' is neither Unix seconds nor RFC 3339",
        ),
        ("", "errors.csv: no points in the file"),
    ],
)
def test_replay_bad_series_is_a_clear_error(
    config_dir: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    series = config_dir / "errors.csv"
    series.write_text(content)
    code = main(
        ["replay", "--config", str(config_dir / "api.yaml"), "--rule", "error-rate", "--series", str(series)]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_replay_unknown_rule_lists_the_known_ones(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = config_dir / "s.csv"
    series.write_text("1,1\n")
    assert (
        main(["replay", "-c", str(config_dir / "api.yaml"), "--rule", "latency", "--series", str(series)])
        == 2
    )
    assert "no rule 'latency' in the config (rules: api/error-rate, api/prisma)" in capsys.readouterr().err


def test_replay_prometheus_on_a_non_prometheus_rule(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "replay",
            "-c",
            str(config_dir / "api.yaml"),
            "--rule",
            "prisma",
            "--prometheus",
            "--start",
            "1",
            "--end",
            "2",
        ]
    )
    assert code == 2
    assert "does not read a prometheus source: use --series FILE" in capsys.readouterr().err


# --- sequential rules: counters ---------------------------------------------------------------


def test_counter_samples_count_growth_and_resets() -> None:
    from watchdogd.replay import counter_samples

    samples = counter_samples(
        [0, 1, 3, 1, None, 2, 2], [0, 100, 200, 50, 80, 120, 120], [0, 1, 2, 3, 4, 5, 6]
    )
    assert samples[0].counts is None and "first point" in (samples[0].reason or "")
    assert [s.counts for s in samples[1:4]] == [(1, 100), (2, 100), (1, 50)]  # a reset counts from 0
    assert samples[4].counts is None and samples[5].counts is None  # after a gap, counting starts again
    assert samples[6].counts == (0, 0) and samples[6].value is None  # no traffic: no evidence


def test_a_sequential_rule_needs_counters_and_other_rules_values(tmp_path: Path) -> None:
    (tmp_path / "api.yaml").write_text(
        """
sources:
  app: {type: scrape, url: "http://127.0.0.1:8080/metrics"}
services:
  api:
    container: api
    rollback: {steps: [container]}
    rules:
      - name: seq
        source: app
        sequential: {errors: 'req_total{code="500"}', total: req_total, bad: 2%, healthy: 0.5%, dispersion: 1}
        action: rollback
"""
    )
    ok = write_tests(
        tmp_path,
        """tests:
  - name: step
    series:
      - {source: app, errors: "0 0 0 20", total: "0+100x3"}
    expect:
      - {rule: seq, at: 30s, state: ok}
      - {rule: seq, at: 45s, state: firing}
      - proposal_at: 45s
  - name: values for a sequential rule
    series:
      - {rule: seq, values: "0.01x3"}
    expect:
      - {rule: seq, at: 15s, state: ok}
""",
    )
    from watchdogd.ruletests import run_file

    first, second = run_file(ok)
    assert first.passed, first.failures
    assert not second.passed
    assert any("needs a series of errors and total" in line for f in second.failures for line in f)


def test_counters_need_both_and_as_many_values(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tests(
        config_dir,
        """tests:
  - name: t
    series:
      - {source: prom, errors: "0 1 2", total: "0 100"}
    expect:
      - proposal_at: never
""",
    )
    assert main(["test-rules", str(path)]) != 0
    assert "errors has 3 values and total 2" in capsys.readouterr().err
