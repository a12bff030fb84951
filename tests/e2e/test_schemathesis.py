"""Schemathesis against a live ``watchdogd run``: the document and the server must agree.

Every operation of ``/v1/openapi.json`` is called with generated requests,
valid ones and invalid ones, with an operator's token, and with the ids of a
real deployment and rollback as well as made-up ones. No answer may be a
5xx, and every answer must be one the document lists, in the shape it gives.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import TOKEN, Watchdogd
from tests.e2e.test_api import api_config, deploy, propose

pytestmark = pytest.mark.integration

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def explore(strategy: Any, label: str, headers: dict[str, str], failures: list[str]) -> int:
    """Call the server with up to EXAMPLES cases; record what breaks a check. How many calls it made."""
    calls = 0

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(headers=headers, timeout=10)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except AssertionError as exc:
            failures.append(
                f"{label} -> {response.status_code}: {str(exc).strip()[:600]}\n"
                f"  sent: {case.body!r:.200} {case.path_parameters} {case.query}\n"
                f"  body: {response.text[:300]!r}"
            )

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid: no parameters, no body
        run()
    return calls


def test_the_api_keeps_to_its_openapi_document(watchdogd: Any) -> None:
    wd: Watchdogd = watchdogd(api_config(grace="1h"))
    wd.start()
    deployment = deploy(wd)
    rollback = propose(wd)
    real = {"deployments": deployment["id"], "rollbacks": rollback["id"]}
    schema = schemathesis.openapi.from_url(f"{wd.url}/v1/openapi.json", timeout=10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    calls = 0
    started = time.monotonic()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        if operation.path == "/v1/events":
            continue  # a stream that stays open: tested in its own module
        label = f"{operation.method.upper()} {operation.path}"
        runs: list[tuple[GenerationMode, dict[str, Any] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if "{id}" in operation.path:
            runs.append((GenerationMode.POSITIVE, {"id": real[operation.path.split("/")[2]]}))
        for mode, path_parameters in runs:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            calls += explore(strategy, f"{label} [{mode.value}]", headers, failures)

    assert not failures, f"{len(failures)} failures in {calls} calls:\n" + "\n".join(failures[:20])
    assert calls > 200
    assert time.monotonic() - started < 90
    assert wd.stop() == 0
