"""JUnit XML for ``watchdogd test-rules --junit FILE``: what CI systems (GitLab, Jenkins, GitHub) show.

One ``<testsuite>`` per test file, one ``<testcase>`` per test; a failed test
has a ``<failure>`` with the readable blocks the terminal prints, and a file
that cannot be used (a config problem) is a suite with one ``<error>``. Written
with the standard library's ElementTree: the format is small and fixed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

from watchdogd.ruletests import Outcome


@dataclass
class FileResult:
    """One test file: its outcomes, or the error that kept it from running."""

    path: str
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None


def _text(lines: Sequence[Sequence[str]]) -> str:
    out = []
    for block in lines:
        for number, line in enumerate(block):
            out.append(line if number == 0 else f"  {line}")
    return "\n".join(out)


def render(results: Sequence[FileResult]) -> str:
    """The report as an XML document."""
    root = ET.Element("testsuites", name="watchdogd test-rules")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    seconds = 0.0
    for result in results:
        suite = ET.SubElement(root, "testsuite", name=result.path)
        failures = sum(1 for o in result.outcomes if not o.passed)
        errors = 1 if result.error is not None else 0
        tests = len(result.outcomes) + errors
        took = sum(o.seconds for o in result.outcomes)
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        suite.set("skipped", "0")
        suite.set("time", f"{took:.3f}")
        if result.error is not None:
            case = ET.SubElement(suite, "testcase", name="(load)", classname=result.path, time="0")
            error = ET.SubElement(case, "error", message=result.error.splitlines()[0], type="ConfigError")
            error.text = result.error
        for outcome in result.outcomes:
            case = ET.SubElement(
                suite, "testcase", name=outcome.name, classname=result.path, time=f"{outcome.seconds:.3f}"
            )
            if not outcome.passed:
                first = outcome.failures[0][0] if outcome.failures and outcome.failures[0] else "failed"
                failure = ET.SubElement(case, "failure", message=first, type="RuleTestFailure")
                failure.text = _text(outcome.failures)
        totals["tests"] += tests
        totals["failures"] += failures
        totals["errors"] += errors
        seconds += took
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
