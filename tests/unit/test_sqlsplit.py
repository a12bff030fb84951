"""Splitting rollback SQL into statements and phases, and refusing what cannot run."""

from __future__ import annotations

import pytest

from watchdogd.rollback.sqlsplit import ScriptError, destructive, parse_script, split


def texts(sql: str) -> list[str]:
    return [s.text for s in split(sql)[0]]


def test_semicolons_in_quotes_comments_and_dollar_bodies_do_not_split() -> None:
    sql = """
    INSERT INTO t VALUES ('a;b', 'it''s; fine');  -- trailing; comment
    /* block; /* nested; */ still comment; */
    CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;
    SELECT E'back\\'slash;', "we;ird""name" FROM x;
    DO $$ BEGIN PERFORM 1; END $$
    """
    assert texts(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s; fine')",
        "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql",
        'SELECT E\'back\\\'slash;\', "we;ird""name" FROM x',
        "DO $$ BEGIN PERFORM 1; END $$",
    ]


def test_statements_carry_the_line_of_their_first_word() -> None:
    sql = "-- header\n\nDROP TABLE a;\n/* x\n y */ ALTER TABLE b\n  DROP COLUMN c;\n"
    assert [(s.line, s.short()) for s in split(sql)[0]] == [
        (3, "DROP TABLE a"),
        (5, "ALTER TABLE b DROP COLUMN c"),
    ]


def test_parameters_and_dollar_signs_in_names_are_not_dollar_quotes() -> None:
    assert texts("SELECT $1, a$b$ FROM t; SELECT 2") == ["SELECT $1, a$b$ FROM t", "SELECT 2"]


@pytest.mark.parametrize("sql", ["SELECT 'open", "SELECT $x$ never closed", "/* open", 'SELECT "open'])
def test_unterminated_quotes_are_errors_with_a_line(sql: str) -> None:
    with pytest.raises(ScriptError, match="line 1: unterminated"):
        split(sql)


@pytest.mark.parametrize(
    ("sql", "word"),
    [
        ("BEGIN;", "BEGIN"),
        ("start transaction", "START TRANSACTION"),
        ("commit", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("END", "END"),
    ],
)
def test_transaction_control_is_refused_anywhere(sql: str, word: str) -> None:
    with pytest.raises(ScriptError, match=f"line 2: {word} is not allowed"):
        parse_script(f"DROP TABLE a;\n{sql}")
    with pytest.raises(ScriptError, match=f"line 3: {word} is not allowed"):
        parse_script(f"DROP TABLE a;\n-- watchdogd:no-transaction\n{sql}")


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ('CREATE INDEX CONCURRENTLY "i" ON t (a)', "CREATE INDEX CONCURRENTLY"),
        ("create unique index concurrently if not exists i on t (a)", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", "DROP INDEX CONCURRENTLY"),
        ("REINDEX (VERBOSE) INDEX CONCURRENTLY i", "REINDEX CONCURRENTLY"),
        ("VACUUM ANALYZE t", "VACUUM"),
        ("ALTER SYSTEM SET work_mem = '64MB'", "ALTER SYSTEM"),
        ("CREATE DATABASE x", "CREATE DATABASE"),
        ("DROP DATABASE x", "DROP DATABASE"),
    ],
)
def test_non_transactional_statements_need_the_marker(sql: str, what: str) -> None:
    with pytest.raises(ScriptError, match=f"line 2: {what} cannot run inside a transaction") as info:
        parse_script(f"DROP TABLE a;\n{sql};\n")
    assert "-- watchdogd:no-transaction" in str(info.value)
    script = parse_script(f"DROP TABLE a;\n-- watchdogd:no-transaction\n{sql};\n")
    assert [s.text for s in script.transactional] == ["DROP TABLE a"]
    assert [(s.line, s.text) for s in script.deferred] == [(3, sql)]


def test_words_inside_strings_do_not_trigger_refusals() -> None:
    script = parse_script("COMMENT ON TABLE t IS 'BEGIN; VACUUM'; SELECT 'CREATE INDEX CONCURRENTLY'")
    assert len(script.transactional) == 2


def test_directives() -> None:
    script = parse_script("-- watchdogd:previous-version 20251226\nDROP TABLE a;")
    assert script.previous_version == "20251226"
    with pytest.raises(ScriptError, match="line 1: unknown directive 'watchdogd:no-transactoin'"):
        parse_script("-- watchdogd:no-transactoin\nDROP TABLE a;")
    with pytest.raises(ScriptError, match=r"line 2: directive .* inside a statement that starts at line 1"):
        parse_script("DROP TABLE a\n-- watchdogd:no-transaction\n;")
    with pytest.raises(ScriptError, match="line 2: a second"):
        parse_script("-- watchdogd:no-transaction\n-- watchdogd:no-transaction\n")
    # a marker that is not alone on its line is an ordinary comment
    assert parse_script("SELECT 1; -- watchdogd:no-transaction\nSELECT 2").deferred == ()


def test_seed_rollback_is_one_transactional_phase_and_its_drops_are_found() -> None:
    sql = """
DROP TABLE IF EXISTS "field_mapping_profiles" CASCADE;
DROP TABLE IF EXISTS "storage_usage", app.other CASCADE;
ALTER TABLE "products" DROP COLUMN IF EXISTS "importSource", DROP CONSTRAINT k, DROP "externalId",
  ADD COLUMN z int CHECK (z IN (1, 2));
ALTER TABLE ONLY products DROP CONSTRAINT products_pkey;
DROP TYPE IF EXISTS "ImportJobPhase";
TRUNCATE TABLE queue;
"""
    script = parse_script(sql)
    found = [(d.kind, d.table, d.column, d.line) for s in script.transactional for d in destructive(s)]
    assert found == [
        ("table", ("field_mapping_profiles",), None, 2),
        ("table", ("storage_usage",), None, 3),
        ("table", ("app", "other"), None, 3),
        ("column", ("products",), "importSource", 4),
        ("column", ("products",), "externalId", 4),
        ("truncate", ("queue",), None, 8),
    ]
