"""Every kind of down statement gets its verdict from PostgreSQL's own parser (pure: no database)."""

from __future__ import annotations

import pytest

from watchdogd.rollback import sqlclass
from watchdogd.rollback.sqlrisk import risks

# (down SQL, verdict, what is counted as "kind:schema.name[.column]:verb", or a fragment of the reason)
CASES: list[tuple[str, str, tuple[str, ...] | str]] = [
    # run: schema changes that keep every row
    ("CREATE TABLE t (id int)", "run", ()),
    ("CREATE INDEX i ON t (id)", "run", ()),
    ("ALTER TABLE t ADD COLUMN c int", "run", ()),
    ("ALTER TABLE t DROP CONSTRAINT t_fk", "run", ()),
    ("DROP INDEX IF EXISTS i", "run", ()),
    ("DROP VIEW v", "run", ()),
    ("DROP TYPE status", "run", ()),
    ("INSERT INTO t VALUES (1)", "run", ()),
    ("SELECT count(*) FROM pg_class", "run", ()),
    ("COMMENT ON TABLE t IS 'x'", "run", ()),
    ("SET search_path = app", "run", ()),
    # count: rows destroyed or rewritten, counted in the live database
    ("DROP TABLE app.t", "count", ("table:app.t:drops",)),
    ("DROP TABLE a, b CASCADE", "count", ("table:a:drops", "table:b:drops")),
    ("DROP MATERIALIZED VIEW mv", "count", ("table:mv:drops",)),
    ('ALTER TABLE t DROP COLUMN "externalId"', "count", ("column:t.externalId:drops",)),
    ("ALTER TABLE t ALTER COLUMN c TYPE text", "count", ("column:t.c:changes the type of",)),
    ("DELETE FROM t WHERE id > 1", "count", ("table:t:deletes",)),
    ("UPDATE app.t SET c = NULL", "count", ("table:app.t:updates",)),
    ("TRUNCATE t", "count", ("table:t:empties",)),
    ("TRUNCATE t CASCADE", "count", ("table:t:empties", "referencing:t:empties")),
    ("DROP SCHEMA legacy CASCADE", "count", ("schema:legacy:drops",)),
    ("DROP TYPE status CASCADE", "count", ("type:status:drops",)),
    ("DROP DOMAIN email CASCADE", "count", ("type:email:drops",)),
    ("WITH gone AS (DELETE FROM t RETURNING id) SELECT count(*) FROM gone", "count", ("table:t:deletes",)),
    (
        "INSERT INTO log SELECT * FROM (WITH u AS (UPDATE t SET c = 1 RETURNING *) SELECT * FROM u) s",
        "count",
        ("table:t:updates",),
    ),
    # approve: what the text cannot tell
    ("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", "approve", "DO"),
    ("CALL cleanup()", "approve", ""),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "approve", ""),
    ("SELECT drop_everything()", "approve", "drop_everything"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "approve", ""),
    ("PREPARE p AS DELETE FROM t", "approve", ""),
    # refuse: never run by a rollback
    ("ALTER ROLE app SUPERUSER", "refuse", ""),
    ("CREATE ROLE x", "refuse", ""),
    ("GRANT ALL ON t TO PUBLIC", "refuse", ""),
    ("ALTER TABLE t OWNER TO x", "refuse", "owner"),
    ("ALTER SYSTEM SET fsync = off", "refuse", ""),
    ("DROP DATABASE prod", "refuse", "database"),
    ("CREATE EXTENSION plpython3u", "refuse", ""),
    ("COPY t TO PROGRAM 'curl x'", "refuse", ""),
    ("COPY t FROM '/etc/passwd'", "refuse", ""),
    ("LOAD 'x.so'", "refuse", ""),
    ("SET ROLE postgres", "refuse", "role"),
    ("COMMIT", "refuse", ""),
    ("VACUUM FULL t", "refuse", ""),
]


def _counted(targets: tuple[object, ...]) -> tuple[str, ...]:
    out = []
    for t in targets:
        name = f"{t.schema}.{t.name}" if t.schema else t.name  # type: ignore[attr-defined]
        column = f".{t.column}" if t.column else ""  # type: ignore[attr-defined]
        out.append(f"{t.kind}:{name}{column}:{t.verb}")  # type: ignore[attr-defined]
    return tuple(out)


@pytest.mark.parametrize(("sql", "verdict", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_each_statement_kind_gets_its_verdict(
    sql: str, verdict: str, expected: tuple[str, ...] | str
) -> None:
    [risk] = risks(sql)
    assert risk.verdict == verdict, (risk.verdict, risk.reason)
    if isinstance(expected, tuple):
        assert _counted(risk.targets) == expected
    else:
        assert expected.lower() in (risk.reason + " " + risk.node).lower(), risk.reason
    if verdict in ("approve", "refuse"):
        assert risk.reason, "an operator is told why"


def test_lines_and_sequences_are_reported_per_statement() -> None:
    found = risks("DROP INDEX i;\n\n-- a comment\nSELECT setval('ids', 1);\nDELETE FROM t;\n")
    assert [(r.line, r.verdict) for r in found] == [(1, "run"), (4, "approve"), (5, "count")]
    assert found[1].sequences == ("setval",)  # never rehearsed: a rollback does not undo it


def test_sql_postgresql_would_not_parse_is_an_error_with_its_line() -> None:
    with pytest.raises(sqlclass.SqlSyntaxError, match="line 2"):
        risks("DROP INDEX i;\nDROP TABEL t;\n")
