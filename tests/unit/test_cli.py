"""The command line: --help on every subcommand, check --json, test-rules -k and --junit."""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from watchdogd.cli import build_parser, main
from watchdogd.clihelp import subcommands

ROOT = Path(__file__).resolve().parents[2]
PATHS = [path for path, _ in subcommands(build_parser())]


def test_the_walk_finds_the_nested_subcommands() -> None:
    assert ("check",) in PATHS and ("completion",) in PATHS and ("ctl", "veto") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_subcommand_has_a_description_and_an_example(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    _usage, _, rest = out.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert len(description.split()) >= 5, f"`watchdogd {' '.join(path)} --help` has no description"
    assert "examples:\n" in out, f"`watchdogd {' '.join(path)} --help` has no example"
    examples = [line.strip() for line in out.split("examples:\n", 1)[1].splitlines() if line.strip()]
    command = "watchdogd " + " ".join(path)
    assert examples and all(command in line for line in examples)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_example_parses(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    from watchdogd.clihelp import HELP

    for example in HELP[path][1]:
        words = shlex.split(example.split(" | ")[0].split(" > ")[0])
        argv = words[words.index("watchdogd") + 1 :]
        build_parser().parse_args(argv)  # exits 2 on an example that is not a valid command line


# --- check --json ---------------------------------------------------------------------------


def test_check_json_names_each_problem_with_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ROOT / "config" / "examples" / "smoke-tests.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n  api:\n    container: api\n    rules:\n      - name: x\n        sourc: prom\n"
    )
    code = main(["check", "--json", "-c", str(good), "-c", str(bad)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == ""
    document = json.loads(captured.out)
    assert document["valid"] is False and document["exit_code"] == 2
    first, second = document["files"]
    assert first["path"] == str(good) and first["valid"] is True and first["problems"] == []
    assert any("smoke" in line for line in first["summary"])
    assert second["valid"] is False
    problems = second["problems"]
    assert {"file", "line", "field", "message"} <= set(problems[0])
    unknown = [p for p in problems if p["field"].endswith("sourc")]
    assert unknown and unknown[0]["file"] == str(bad) and unknown[0]["line"] == 6


def test_check_json_of_a_valid_config_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--json", "-c", str(ROOT / "config" / "examples" / "smoke-tests.yaml")])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


# --- test-rules -k and --junit ----------------------------------------------------------------

SMOKE = ROOT / "config" / "examples" / "tests" / "smoke-tests.test.yaml"


def test_k_runs_only_the_matching_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-rules", "-v", "-k", "SEED 001", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    passed = [line for line in out.splitlines() if line.startswith("PASS")]
    assert passed and all("seed 001" in line for line in passed)
    assert "2 passed, 0 failed" in out


def test_k_as_a_glob(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-rules", "-v", "-k", "*rolL back", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert "1 passed, 0 failed" in out and "three failed smoke tests roll back" in out


def test_k_that_matches_nothing_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-rules", "-k", "no such test", str(SMOKE)]) == 1
    assert "no test matches -k 'no such test'" in capsys.readouterr().err


def test_junit_report_lists_passes_failures_and_broken_files(tmp_path: Path) -> None:
    config = tmp_path / "api.yaml"
    config.write_text(
        "sources:\n  prom: {type: prometheus, url: 'http://127.0.0.1:9090'}\n"
        "services:\n  api:\n    container: api\n    rollback: {steps: [container]}\n    rules:\n"
        "      - {name: error-rate, source: prom, query: q, condition: '> 0.05', for: 1m, action: rollback}\n"
    )
    tests = tmp_path / "api.test.yaml"
    tests.write_text(
        "rule_files: [api.yaml]\ninterval: 15s\ntests:\n"
        "  - name: fires\n    series: [{source: prom, values: '0.2x10'}]\n"
        "    expect: [{rule: error-rate, at: 2m, state: firing}]\n"
        "  - name: wrongly expected ok\n    series: [{source: prom, values: '0.2x10'}]\n"
        "    expect: [{rule: error-rate, at: 2m, state: ok}]\n"
    )
    broken = tmp_path / "broken.test.yaml"
    broken.write_text("rule_files: [missing.yaml]\ntests: []\n")
    report = tmp_path / "out" / "report.xml"
    report.parent.mkdir()
    assert main(["test-rules", "--junit", str(report), str(tests), str(broken)]) == 2
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(tests), str(broken)]
    cases = {c.get("name"): c for c in suites[0].findall("testcase")}
    assert cases["fires"].find("failure") is None
    failure = cases["wrongly expected ok"].find("failure")
    assert failure is not None and "firing" in (failure.text or "")
    error = suites[1].find("testcase/error")
    assert error is not None and str(broken) in (error.text or "")


def test_junit_to_an_unwritable_place_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test-rules", "--junit", str(tmp_path / "no" / "dir.xml"), str(SMOKE)]) == 2
    assert "cannot write" in capsys.readouterr().err
