"""docs/api.md and the OpenAPI document describe the same routes with the same roles."""

from __future__ import annotations

import re
from pathlib import Path

from watchdogd.openapi import OPERATIONS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
ROW = re.compile(r"^\| `(GET|POST|PUT|DELETE|PATCH) (/\S*)` \| ([a-z ]+) \|", re.M)


def documented() -> dict[tuple[str, str], str]:
    return {(m[1], m[2]): m[3] for m in ROW.finditer(DOC)}


def test_every_route_of_the_openapi_document_is_in_the_routes_table_with_its_role() -> None:
    rows = documented()
    for (method, path), operation in OPERATIONS.items():
        assert (method, path) in rows, f"docs/api.md has no row for {method} {path}"
        role = rows[(method, path)]
        expected = operation.role or "open"
        assert role == expected or (expected == "open" and role.endswith("open")), (method, path, role)


def test_every_row_of_the_routes_table_is_a_route() -> None:
    assert set(documented()) <= set(OPERATIONS)


def test_the_backup_routes_and_their_errors_are_documented() -> None:
    assert ("POST", "/v1/services/{service}/backups") in documented()
    for code in ("backup_failed", "database_down", "no_database", "no_backups_dir", "unknown_backup"):
        assert re.search(rf"^\| 4\d\d \| `{code}` \|", DOC, re.M), f"no row for {code} in the errors table"
    assert "| `backup_id` | no |" in DOC
    assert '"group": {"name"' in DOC
