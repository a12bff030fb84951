"""The config: examples load, every mistake is one clear line, secrets stay hidden."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest

from watchdogd.cli import main
from watchdogd.config import Condition, format_duration, load_config, load_config_text, parse_duration
from watchdogd.config.types import parse_percent
from watchdogd.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parents[2] / "config" / "examples").glob("*.yaml"))
FILE = "config/api.yaml"

# A valid config; each invalid case below changes one thing in it.
BASE = """\
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090}
  app: {type: scrape, url: http://127.0.0.1:8080/metrics}
  health: {type: http, url: http://127.0.0.1:8080/health}
  box: {type: docker, container: api}
  logs: {type: docker_logs, container: api}
services:
  api:
    container: api
    rollback: {steps: [container, verify]}
    rules:
      - name: error-rate
        source: prom
        query: up
        condition: "> 0.05"
        for: 5m
        action: rollback
"""


def load(text: str, tmp_path: Path) -> list[str]:
    """The problems of a config text, one line each."""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, filename=FILE, base_dir=tmp_path)
    return [str(problem) for problem in info.value.problems]


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_default_steps_are_what_the_service_has(tmp_path: Path) -> None:
    # no database: no sql step demanded; no rollback rule: no steps demanded at all
    config = load_config_text(edit("    rollback: {steps: [container, verify]}\n", ""), FILE, tmp_path)
    assert config.services["api"].plan() == ("container", "verify")
    notify_only = edit("    container: api\n    rollback: {steps: [container, verify]}\n", "")
    notify_only = notify_only.replace("action: rollback", "action: notify")
    assert load_config_text(notify_only, FILE, tmp_path).services["api"].plan() == ("verify",)


def test_base_config_is_valid(tmp_path: Path) -> None:
    config = load_config_text(BASE, filename=FILE, base_dir=tmp_path)
    rule = config.services["api"].rules[0]
    assert (rule.name, rule.for_, rule.condition) == ("error-rate", 300.0, Condition(">", 0.05))


# --- (a) the examples -------------------------------------------------------------


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_checks(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(path)
    assert config.services
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: valid\n")
    assert err == ""
    for name in config.services:
        assert f"\n    {name}:\n" in out


# --- (b) one mistake, one line --------------------------------------------------------

INVALID = [
    pytest.param(
        edit("for: 5m", "for: 5 minutes"),
        "config/api.yaml:16: services.api.rules[0].for: "
        "invalid duration '5 minutes': write it like 500ms, 15s, 5m or 2h",
        id="bad-duration",
    ),
    pytest.param(
        edit("for: 5m", "for: 5"),
        "config/api.yaml:16: services.api.rules[0].for: invalid duration 5: give a unit, like 5s or 5m",
        id="bare-number-duration",
    ),
    pytest.param(
        edit("for: 5m", "for: -5m"),
        "config/api.yaml:16: services.api.rules[0].for: "
        "invalid duration '-5m': write it like 500ms, 15s, 5m or 2h",
        id="negative-duration",
    ),
    pytest.param(
        "sourcez: {}\n",
        "config/api.yaml:1: sourcez: unknown key 'sourcez' (did you mean 'sources'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        BASE + "bogus: 1\n",
        "config/api.yaml:18: bogus: unknown key 'bogus'",
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        edit("action: rollback", "acton: rollback"),
        "config/api.yaml:17: services.api.rules[0].acton: unknown key 'acton' (did you mean 'action'?)",
        id="unknown-key-in-rule",
    ),
    pytest.param(
        edit("prom: {type: prometheus, url:", "prom: {type: prometheus, timout: 2s, url:"),
        "config/api.yaml:2: sources.prom.timout: unknown key 'timout' (did you mean 'timeout'?)",
        id="unknown-key-in-source",
    ),
    pytest.param(
        edit("source: prom", "source: promm"),
        "config/api.yaml:13: services.api.rules[0].source: "
        "unknown source 'promm' (sources: app, box, health, logs, prom)",
        id="unknown-source",
    ),
    pytest.param(
        edit("query: up", "query: up\n        field: running"),
        "config/api.yaml:15: services.api.rules[0].field: "
        "'field' does not apply to a prometheus source; it takes a query (PromQL), sequential or latency",
        id="field-does-not-fit-source",
    ),
    pytest.param(
        edit("source: prom\n        query: up", "source: box\n        field: runing"),
        "config/api.yaml:14: services.api.rules[0].field: unknown field 'runing' (one of: running, "
        "crashed, restarts, oom_killed, exit_code, healthy, memory_percent, cpu_percent)",
        id="unknown-docker-field",
    ),
    pytest.param(
        edit("source: prom\n        query: up", "source: app"),
        "config/api.yaml:12: services.api.rules[0]: "
        "a rule on scrape source 'app' needs exactly one of metric, rate, ratio, quantile, sequential,"
        " latency",
        id="scrape-rule-measures-nothing",
    ),
    pytest.param(
        edit("steps: [container, verify]", "steps: [container, rewind]"),
        "config/api.yaml:10: services.api.rollback.steps[1]: "
        "must be 'container', 'sql', 'restore', 'redis_purge', 'webhook', 'verify' or 'command:NAME', "
        "not 'rewind'",
        id="unknown-rollback-step",
    ),
    pytest.param(
        edit("steps: [container, verify]", "steps: [container, sql]"),
        "config/api.yaml:10: services.api.rollback.steps[1]: a sql step needs the service's database",
        id="sql-step-without-database",
    ),
    pytest.param(
        edit("    container: api\n    rollback: {steps: [container, verify]}\n", ""),
        "config/api.yaml:15: services.api.rules[0].action: a rollback rule with nothing to roll back:"
        " give the service a container, a database, rollback.redis_purge or rollback.webhook,"
        " or write rollback.steps",
        id="rollback-rule-with-nothing-to-roll-back",
    ),
    pytest.param(
        edit('"> 0.05"', '"=> 0.05"'),
        "config/api.yaml:15: services.api.rules[0].condition: invalid condition '=> 0.05': "
        'write an operator (>, >=, <, <=, ==, !=) and a number, like "> 0.05"',
        id="bad-condition-operator",
    ),
    pytest.param(
        edit('"> 0.05"', "0.05"),
        "config/api.yaml:15: services.api.rules[0].condition: "
        'invalid condition 0.05: write an operator and a number, like "> 0.05"',
        id="condition-without-operator",
    ),
    pytest.param(
        edit('"> 0.05"', '">"'),
        "config/api.yaml:15: services.api.rules[0].condition: '>' needs a number to compare with",
        id="condition-without-number",
    ),
    pytest.param(
        edit('condition: "> 0.05"', 'condition: ">"\n        baseline: {before: 30m, tolerance: ten%}'),
        "config/api.yaml:16: services.api.rules[0].baseline.tolerance: "
        "invalid percentage 'ten%': write it like 10%",
        id="bad-percent",
    ),
    pytest.param(
        edit('condition: "> 0.05"', 'condition: ">"\n        baseline: {before: 30m, tolerance: -10%}'),
        "config/api.yaml:16: services.api.rules[0].baseline.tolerance: "
        "invalid percentage '-10%': it must be 0% or more",
        id="negative-percent",
    ),
    pytest.param(
        edit("query: up", "query: up\n        query: down"),
        "config/api.yaml:15: services.api.rules[0].query: duplicate key",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        edit("action: rollback", "action: rollback\n        immediate: maybe"),
        "config/api.yaml:18: services.api.rules[0].immediate: "
        "must be a valid boolean, unable to interpret input",
        id="wrong-type-boolean",
    ),
    pytest.param(
        "defaults: {interval: 15s, mode: 3}\n",
        "config/api.yaml:1: defaults.mode: must be 'auto', 'manual' or 'dry-run', not 3",
        id="wrong-type-literal",
    ),
    pytest.param(
        "services:\n  api:\n    database: postgresql://app@db/app\n",
        "config/api.yaml:3: services.api.database: must be a mapping of keys, not str",
        id="scalar-where-mapping-belongs",
    ),
    pytest.param(
        edit("        source: prom\n", ""),
        "config/api.yaml:12: services.api.rules[0].source: required",
        id="missing-required-field",
    ),
    pytest.param(
        "sources:\n  q: {type: kafka, url: http://127.0.0.1:9092}\n",
        "config/api.yaml:2: sources.q.type: unknown type 'kafka' "
        "(one of: 'prometheus', 'scrape', 'http', 'docker', 'docker_logs', 'file', 'postgres', 'redis', "
        "'exec', 'alertmanager')",
        id="unknown-source-type",
    ),
    pytest.param(
        "sources:\n  q: {url: http://127.0.0.1:9092}\n",
        "config/api.yaml:2: sources.q.type: missing 'type'",
        id="source-without-type",
    ),
    pytest.param(
        "sources:\n  prom: {type: prometheus\nservices: [\n",
        "config/api.yaml:3: invalid YAML: expected ',' or '}', but got ':'",
        id="yaml-syntax-error",
    ),
    pytest.param(
        "server:\n\t- listen\n",
        "config/api.yaml:2: invalid YAML: found character '\\t' that cannot start any token",
        id="yaml-tab",
    ),
    pytest.param("", "config/api.yaml:1: the config is empty", id="empty-file"),
    pytest.param("# only a comment\n", "config/api.yaml:1: the config is empty", id="only-comments"),
    pytest.param(
        "- a\n- b\n", "config/api.yaml:1: the config must be a mapping of keys", id="top-level-list"
    ),
    pytest.param(
        edit("for: 5m", "failures: {count: 5, of: 3}"),
        "config/api.yaml:16: services.api.rules[0].failures.of: 5 failures cannot happen in 3 evaluations",
        id="failures-count-above-of",
    ),
    pytest.param(
        edit("for: 5m", "failures: {count: 0}"),
        "config/api.yaml:16: services.api.rules[0].failures.count: must be greater than 0",
        id="failures-count-zero",
    ),
    pytest.param(
        edit(
            "source: prom\n        query: up",
            "source: app\n        metric: 'http_requests_total{code=~\"5..}'",
        ),
        "config/api.yaml:14: services.api.rules[0].metric: "
        "invalid selector 'http_requests_total{code=~\"5..}': unterminated string",
        id="invalid-selector",
    ),
    pytest.param(
        edit(
            "source: prom\n        query: up",
            "source: app\n        ratio: {numerator: 'a{code=5}', denominator: b, over: 1m}",
        ),
        "config/api.yaml:14: services.api.rules[0].ratio.numerator: "
        "invalid selector 'a{code=5}': expected a quoted value at 8",
        id="invalid-selector-in-ratio",
    ),
    pytest.param(
        edit("    container: api\n", "    container: api\n    health: prom\n"),
        "config/api.yaml:10: services.api.health: 'prom' is a prometheus source; health needs an http source",
        id="health-not-http",
    ),
    pytest.param(
        BASE
        + "      - name: error-rate\n        source: prom\n        query: up\n        condition: '> 1'\n",
        "config/api.yaml:18: services.api.rules[1].name: rule 'error-rate' is defined twice in this service",
        id="duplicate-rule-names",
    ),
    pytest.param(
        edit("name: error-rate", "name: error rate"),
        "config/api.yaml:12: services.api.rules[0].name: invalid name 'error rate': "
        "use letters, digits, '_', '.' and '-', starting with a letter or digit",
        id="bad-rule-name",
    ),
    pytest.param(
        edit("source: prom\n        query: up", "source: logs\n        pattern: '(['\n        over: 1m"),
        "config/api.yaml:14: services.api.rules[0].pattern: "
        "invalid regular expression: unterminated character set at position 1",
        id="bad-regex",
    ),
    pytest.param(
        edit("action: rollback", "immediate: true"),
        "config/api.yaml:17: services.api.rules[0].immediate: "
        "an immediate rule fires on one hit; drop for or failures",
        id="immediate-with-for",
    ),
    pytest.param(
        "server: {listen: localhost}\n",
        "config/api.yaml:1: server.listen: invalid listen address 'localhost': write it as host:port",
        id="bad-listen",
    ),
    pytest.param(
        "state: {url: 'mysql://app@db/state'}\n",
        "config/api.yaml:1: state.url: unsupported state store 'mysql': use sqlite:// or postgresql://",
        id="bad-state-store",
    ),
    pytest.param(
        edit("steps: [container, verify]", "steps: [container, container]"),
        "config/api.yaml:10: services.api.rollback.steps[1]: step 'container' is listed twice",
        id="step-listed-twice",
    ),
    pytest.param(
        edit(
            "        source: prom\n        query: up\n",
            "        source: app\n        ratio: {numerator: 'e_total', denominator: r_total, over: 10s}\n",
        ),
        "config/api.yaml:14: services.api.rules[0].ratio.over: a 10s window never holds two polls"
        " of 'app' (every 15s): the rule could never see; make it at least 30s, or poll more often",
        id="blind-window",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_config_is_one_line(text: str, message: str, tmp_path: Path) -> None:
    assert load(text, tmp_path) == [message]


def test_invalid_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(edit("for: 5m", "for: 5 minutes"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:16: services.api.rules[0].for: "
        "invalid duration '5 minutes': write it like 500ms, 15s, 5m or 2h"
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"


# --- (c) every problem at once ------------------------------------------------------

SEVERAL = """\
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090, timout: 2s}
defaults: {interval: 15 s}
services:
  api:
    rules:
      - name: a
        source: prom
        query: up
        condition: "> 1"
        for: 5
"""


def test_several_shape_problems_are_all_reported_in_file_order(tmp_path: Path) -> None:
    assert load(SEVERAL, tmp_path) == [
        "config/api.yaml:2: sources.prom.timout: unknown key 'timout' (did you mean 'timeout'?)",
        "config/api.yaml:3: defaults.interval: invalid duration '15 s': write it like 500ms, 15s, 5m or 2h",
        "config/api.yaml:11: services.api.rules[0].for: invalid duration 5: give a unit, like 5s or 5m",
    ]


def test_several_cross_checks_are_all_reported(tmp_path: Path) -> None:
    text = (
        edit("steps: [container, verify]", "steps: [container, sql]")
        + "      - name: error-rate\n        source: nope\n        condition: '> 1'\n"
    )
    problems = load(text, tmp_path)
    assert problems == [
        "config/api.yaml:10: services.api.rollback.steps[1]: a sql step needs the service's database",
        "config/api.yaml:18: services.api.rules[1].name: rule 'error-rate' is defined twice in this service",
        "config/api.yaml:19: services.api.rules[1].source: "
        "unknown source 'nope' (sources: app, box, health, logs, prom)",
    ]


def test_duplicate_keys_are_all_reported(tmp_path: Path) -> None:
    text = "defaults: {mode: auto}\ndefaults: {mode: manual}\nnotify: []\nnotify: []\n"
    assert load(text, tmp_path) == [
        "config/api.yaml:2: defaults: duplicate key",
        "config/api.yaml:4: notify: duplicate key",
    ]


# --- (d) the check command on a bad config ------------------------------------------


def test_check_invalid_config_exits_2_with_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(SEVERAL)
    assert main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:2: sources.prom.timout: unknown key 'timout' (did you mean 'timeout'?)",
        f"{path}:3: defaults.interval: invalid duration '15 s': write it like 500ms, 15s, 5m or 2h",
        f"{path}:11: services.api.rules[0].for: invalid duration 5: give a unit, like 5s or 5m",
    ]
    assert "Traceback" not in err


def test_check_yaml_error_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api.yaml"
    path.write_text("sources: {prom: [\n")
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err == f"{path}:2: invalid YAML: expected the node content, but found '<stream end>'\n"
    assert "Traceback" not in out + err


def test_check_reports_each_file_and_fails_if_one_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(BASE)
    bad.write_text("bogus: 1\n")
    assert main(["check", "-q", "-c", str(bad), "-c", str(good)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{good}: valid\n"
    assert err == f"{bad}:1: bogus: unknown key 'bogus'\n"


# --- (e) secrets --------------------------------------------------------------------

PASSWORD = "hunter2-dsn-pw"
TOKEN = "tok-3f9a8b7c6d"
SECRET_CONFIG = f"""\
state:
  url: postgresql://watchdogd:{PASSWORD}@db:5432/state?sslpassword={PASSWORD}
sources:
  prom:
    type: prometheus
    url: http://127.0.0.1:9090
    bearer_token: {TOKEN}
    headers: {{Authorization: Bearer {TOKEN}}}
  db: {{type: postgres, dsn: 'postgresql://app:{PASSWORD}@db/app'}}
services:
  api:
    container: api
    database: {{dsn: 'postgresql://app:{PASSWORD}@db/app'}}
    rules:
      - name: db-up
        source: db
        field: connected
        condition: "< 1"
"""


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    config = load_config_text(SECRET_CONFIG, filename=FILE, base_dir=tmp_path)
    assert config.services["api"].database is not None
    assert config.services["api"].database.dsn.secret() == f"postgresql://app:{PASSWORD}@db/app"
    shown = repr(config) + str(config) + config.model_dump_json()
    assert PASSWORD not in shown
    assert TOKEN not in shown
    assert "postgresql://app:***@db/app" in shown


def test_secrets_never_in_check_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(SECRET_CONFIG)
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert TOKEN not in out + err
    assert "state: postgresql://watchdogd:***@db:5432/state?sslpassword=***" in out
    assert "    database: postgresql://app:***@db/app" in out


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(SECRET_CONFIG + "bogus: 1\n", id="unknown-key-beside-secrets"),
        pytest.param(
            f"services:\n  api:\n    database: postgresql://app:{PASSWORD}@db/app\n", id="dsn-as-database"
        ),
        pytest.param(
            f"services:\n  api:\n    database: {{dsn: 'host=db password={PASSWORD}'}}\n", id="dsn-not-a-url"
        ),
        pytest.param(
            f"sources:\n  p: {{type: prometheus, url: http://a, bearer_token: [{TOKEN}]}}\n",
            id="token-wrong-type",
        ),
        pytest.param(f"state: {{url: 'mysql://u:{PASSWORD}@db/x'}}\n", id="bad-scheme-with-password"),
        pytest.param(f"defaults: {{mode: 'postgresql://u:{PASSWORD}@db/x'}}\n", id="dsn-in-wrong-field"),
    ],
)
def test_secrets_never_in_errors(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, filename=FILE, base_dir=tmp_path)
    assert PASSWORD not in str(info.value)
    assert TOKEN not in str(info.value)
    path = tmp_path / "api.yaml"
    path.write_text(text)
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert TOKEN not in out + err


# --- (f) frozen ---------------------------------------------------------------------


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load_config_text(BASE, filename=FILE, base_dir=tmp_path)
    rule = config.services["api"].rules[0]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        rule.for_ = 0.0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.defaults.mode = "manual"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rule.condition.threshold = 1.0  # type: ignore[misc, union-attr]
    assert isinstance(config.services["api"].rules, tuple)
    assert rule.for_ == 300.0


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    text = "server: {tokens_file: tokens.yaml}\nstate: {url: 'sqlite:///state.db'}\n"
    config = load_config_text(text, filename=FILE, base_dir=tmp_path)
    assert config.server.tokens_file == tmp_path.resolve() / "tokens.yaml"
    assert config.state.url.secret() == f"sqlite:///{tmp_path.resolve() / 'state.db'}"


# --- (g) durations, percentages, conditions ---------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5m", 90.0),
        ("0", 0.0),
        (0, 0.0),
        (" 5m ", 300.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "invalid duration '5': write it like 500ms, 15s, 5m or 2h"),
        (5, "invalid duration 5: give a unit, like 5s or 5m"),
        ("", "invalid duration '': write it like 500ms, 15s, 5m or 2h"),
        ("5 m", "invalid duration '5 m': write it like 500ms, 15s, 5m or 2h"),
        ("5mm", "invalid duration '5mm': write it like 500ms, 15s, 5m or 2h"),
        ("m5", "invalid duration 'm5': write it like 500ms, 15s, 5m or 2h"),
        (True, "invalid duration True: write it like 500ms, 15s, 5m or 2h"),
        (None, "invalid duration None: write it like 500ms, 15s, 5m or 2h"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (15, "15s"), (300, "5m"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fraction"), [("10%", 0.1), ("0%", 0.0), ("2.5%", 0.025), (0.1, 0.1), (" 50% ", 0.5)]
)
def test_parse_percent(text: object, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", "invalid percentage '10': write it like 10%"),
        ("x%", "invalid percentage 'x%': write it like 10%"),
        ("-5%", "invalid percentage '-5%': it must be 0% or more"),
        (True, "invalid percentage True: write it like 10%"),
        (float("nan"), "invalid percentage 'nan': it must be 0% or more"),
    ],
)
def test_parse_percent_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_percent(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "op", "threshold"),
    [
        ("> 0.05", ">", 0.05),
        (">=1", ">=", 1.0),
        ("< -2", "<", -2.0),
        ("<= 1e3", "<=", 1000.0),
        ("== 0", "==", 0.0),
        ("!= 1", "!=", 1.0),
        ("> 5%", ">", 0.05),
        ("< inf", "<", math.inf),
        (">= -Inf", ">=", -math.inf),
        (">", ">", None),
    ],
)
def test_condition_parse(text: str, op: str, threshold: float | None) -> None:
    condition = Condition.parse(text)
    assert (condition.op, condition.threshold) == (op, threshold)


def test_condition_parse_nan_threshold() -> None:
    condition = Condition.parse("!= NaN")
    assert condition.op == "!="
    assert condition.threshold is not None and math.isnan(condition.threshold)


@pytest.mark.parametrize("text", ["=> 1", "~ 1", "> abc", "1 >", "", "greater 1"])
def test_condition_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Condition.parse(text)
    assert str(info.value) == (
        f"invalid condition '{text}': write an operator (>, >=, <, <=, ==, !=) and a number, like \"> 0.05\""
    )


NAN = math.nan
INF = math.inf


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        ("> 1", 2, True),
        ("> 1", 1, False),
        (">= 1", 1, True),
        (">= 1", 0.99, False),
        ("< 1", 0, True),
        ("< 1", 1, False),
        ("<= 1", 1, True),
        ("<= 1", 1.01, False),
        ("== 1", 1, True),
        ("== 1", 2, False),
        ("!= 1", 2, True),
        ("!= 1", 1, False),
        ("> 1", INF, True),
        ("< 1", -INF, True),
        ("< inf", INF, False),
        ("> 1", NAN, False),
        (">= 1", NAN, False),
        ("< 1", NAN, False),
        ("<= 1", NAN, False),
        ("== 1", NAN, False),
        ("!= 1", NAN, True),
        ("== nan", NAN, False),
    ],
)
def test_condition_holds(condition: str, value: float, holds: bool) -> None:
    assert Condition.parse(condition).holds(value) is holds


def test_bare_operator_compares_with_a_given_threshold() -> None:
    condition = Condition.parse(">")
    assert condition.holds(11, threshold=10) is True
    assert condition.holds(10, threshold=10) is False
    with pytest.raises(ValueError, match="a bare operator needs a threshold"):
        condition.holds(11)


def test_condition_in_words() -> None:
    assert Condition.parse(">= 0.5").describe() == "at or above 0.5"
    assert Condition.parse("!= 0").describe() == "not equal to 0"
    assert str(Condition.parse(">   0.050")) == "> 0.05"


# --- (h) check says what it understood, in words -----------------------------------

WORDS = """\
defaults: {interval: 30s, window: 4h, grace: 90s, mode: manual}
sources:
  prom: {type: prometheus, url: http://127.0.0.1:9090}
  app: {type: scrape, url: http://127.0.0.1:8080/metrics, interval: 10s}
  logs: {type: docker_logs, container: api}
services:
  api:
    container: api
    window: 2h
    rollback: {steps: [container, verify]}
    rules:
      - name: error-rate
        source: prom
        query: up
        condition: "> 0.05"
        for: 5m
        action: rollback
      - name: latency
        source: app
        quantile: {metric: http_request_duration_seconds, q: 0.99, over: 1m}
        condition: "> 1"
        failures: {count: 3, of: 5}
        on_missing: {after: 2m, result: fail}
      - name: slower
        source: prom
        query: rate(x[1m])
        condition: ">"
        baseline: {before: 30m, tolerance: 10%}
        keep_firing_for: 10m
      - name: prisma
        source: logs
        pattern: PrismaClient
        condition: ">= 1"
        over: 1m
        immediate: true
        action: rollback
      - name: silent
        source: logs
        pattern: SystemGate
        absent_for: 1h
"""


def test_check_prints_rules_in_plain_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(WORDS)
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for phrase in [
        "defaults: poll every 30s, watch 4h after a deploy, veto window 1m30s, mode manual",
        "app: scrape, scrapes http://127.0.0.1:8080/metrics, every 10s, timeout 5s",
        "watched for 2h after a deploy, evaluated every 30s, veto window 1m30s, mode manual",
        "rollback: container -> verify",
        "rule error-rate [critical, rollback]",
        "rolls back when the value is above 0.05 at every evaluation for 5m",
        "watches: P99 of histogram http_request_duration_seconds over 1m on app",
        "notifies when the value is above 1 in 3 of the last 5 evaluations",
        "missing data: counts as a failing evaluation after 2m without data",
        "notifies when the value is more than 10% above the pre-deploy mean of the 30m before the deploy"
        " at one evaluation; keeps firing 10m after it clears",
        "rolls back when the value is at or above 1, at once (one hit is enough, no veto window)",
        "watches: log lines matching /PrismaClient/ per 1m on logs",
        "notifies when no line has matched for 1h after the deploy",
        "missing data: hold the last state (missing data never fires the rule)",
    ]:
        assert phrase in out, phrase


def test_check_quiet_prints_only_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(WORDS)
    assert main(["check", "-q", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid\n"


def test_a_promql_typo_is_refused_with_its_line(tmp_path: Path) -> None:
    typo = edit("        query: up\n", '        query: sum(rate(http_requests_total{code=~"5.."}[1m])\n')
    assert load(typo, tmp_path) == [
        "config/api.yaml:14: services.api.rules[0].query:"
        " PromQL that does not parse: unclosed left parenthesis"
    ]
