"""The classifier of SQL statements (PostgreSQL's own parser): kinds, schemas, reasons."""

from __future__ import annotations

import pytest

from watchdogd.demo.seed000 import SEED_ROLLBACK, SEED_VERIFY
from watchdogd.rollback.sqlclass import DEFAULT_SCHEMA, SqlSyntaxError, classify, refusals, verify_refusals


def test_the_seed_rollback_is_schema_changes_in_the_default_schema() -> None:
    statements = classify(SEED_ROLLBACK)
    assert len(statements) == 10
    assert {s.kind for s in statements} == {"schema_change"}
    assert {s.schemas for s in statements} == {(DEFAULT_SCHEMA,)}
    assert [s.destroys_data for s in statements][:8] == [True] * 8  # 4 tables, 4 columns
    assert [s.destroys_data for s in statements][8:] == [False, False]  # 2 types
    assert statements[0].line == 2
    assert refusals(statements, ["public"]) == []


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("CREATE ROLE r", "creates a role"),
        ("ALTER ROLE app SUPERUSER", "changes a role"),
        ("GRANT SELECT ON t TO bob", "grants or revokes privileges"),
        ("REVOKE SELECT ON t FROM bob", "grants or revokes privileges"),
        ("ALTER SYSTEM SET fsync = off", "ALTER SYSTEM"),
        ("CREATE DATABASE d", "creates a database"),
        ("DROP DATABASE d", "drops a database"),
        ("COPY t TO PROGRAM 'sh'", "COPY ... PROGRAM"),
        ("COPY t FROM PROGRAM 'sh'", "COPY ... PROGRAM"),
        ("COPY t TO '/tmp/x'", "COPY"),
        ("CREATE EXTENSION dblink", "creates an extension"),
        ("DROP EXTENSION dblink", "drops extension"),
        ("DO $$ BEGIN EXECUTE 'x'; END $$", "DO block"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "creates a function"),
        ("PREPARE p AS SELECT 1", "dynamic SQL"),
        ("SET search_path = evil", "session setting"),
        ("DROP SCHEMA public CASCADE", "drops schema"),
        ("ALTER TABLE t OWNER TO bob", "changes an owner"),
        ("CREATE SCHEMA s", "creates a schema"),
        ("ALTER TABLE t SET SCHEMA other", "moves an object to another schema"),
    ],
)
def test_forbidden_statements_say_why(sql: str, reason: str) -> None:
    (stmt,) = classify(sql)
    assert stmt.kind == "forbidden"
    assert reason in stmt.reason
    assert refusals([stmt], ["public"])


@pytest.mark.parametrize(
    ("sql", "schemas"),
    [
        ("DROP TABLE billing.invoices", ("billing",)),
        (
            'ALTER TABLE "products" ADD CONSTRAINT c FOREIGN KEY (x) REFERENCES other.t(id)',
            (DEFAULT_SCHEMA, "other"),
        ),
        ("CREATE VIEW v AS SELECT * FROM other.t", (DEFAULT_SCHEMA, "other")),
        ("DROP TRIGGER tr ON other.t", ("other",)),
        ("DROP TYPE other.e", ("other",)),
        ("COMMENT ON COLUMN t.c IS 'x'", (DEFAULT_SCHEMA,)),
        ("DROP INDEX public.i", ("public",)),
    ],
)
def test_the_schemas_a_statement_names(sql: str, schemas: tuple[str, ...]) -> None:
    (stmt,) = classify(sql)
    assert stmt.schemas == schemas
    assert bool(refusals([stmt], ["public"])) == ("other" in schemas or "billing" in schemas)


def test_data_changes_reads_and_function_calls_are_not_schema_changes() -> None:
    delete, truncate, update, select, default = classify(
        "DELETE FROM t; TRUNCATE t; UPDATE t SET x = 1; SELECT 1;"
        "ALTER TABLE t ADD COLUMN z text DEFAULT pg_read_file('/etc/passwd')"
    )
    assert (delete.kind, delete.destroys_data) == ("data_change", True)
    assert (truncate.kind, truncate.destroys_data) == ("data_change", True)
    assert (update.kind, update.destroys_data) == ("data_change", False)
    assert select.kind == "read"
    assert (default.kind, default.functions) == ("schema_change", ("pg_read_file",))
    problems = refusals([delete, truncate, update, select, default], ["public"])
    assert len(problems) == 5
    assert "calls pg_read_file" in problems[4]
    (ok,) = classify(
        "ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now(), ALTER COLUMN n TYPE text USING trim(n)"
    )
    assert refusals([ok], ["public"]) == []


def test_a_syntax_error_names_its_line() -> None:
    with pytest.raises(SqlSyntaxError, match="line 2"):
        classify("DROP TABLE a;\nDROP TABLE FROM;")


def test_verify_queries_from_a_request_read_only_the_catalog() -> None:
    for query in SEED_VERIFY:
        assert verify_refusals(query) == [], query
    assert verify_refusals("SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typname = 'E')") == []
    assert "reads users" in verify_refusals("SELECT (SELECT password FROM users LIMIT 1) LIKE '$2b%'")[0]
    assert "reads pg_catalog.pg_authid" in verify_refusals("SELECT count(*) > 0 FROM pg_catalog.pg_authid")[0]
    assert "calls pg_read_file" in verify_refusals("SELECT pg_read_file('/etc/passwd') = ''")[0]
    assert "not 2" in verify_refusals("SELECT true; SELECT true")[0]
    assert "not DeleteStmt" in verify_refusals("DELETE FROM users")[0]
