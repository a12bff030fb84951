"""The state store's tables, version by version, in SQLite's and PostgreSQL's words.

``schema_version`` holds one row: the version a store is at. Opening a store
applies every later version in one transaction; a store newer than
``SCHEMA_VERSION`` is refused. PostgreSQL's DDL names the schema as ``{s}``.
"""

from __future__ import annotations

SCHEMA_VERSION = 3

_SQLITE_ROLLBACKS = """(
    id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL{unique},
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    reasons TEXT NOT NULL,
    target TEXT NOT NULL,
    proposed_at REAL NOT NULL,
    execute_at REAL,
    started_at REAL,
    finished_at REAL,
    error TEXT
)"""

_V3 = """
CREATE TABLE {s}freezes (
    service {text} PRIMARY KEY,
    reason {text} NOT NULL,
    since {real} NOT NULL,
    until {real} NOT NULL,
    actor {text} NOT NULL,
    rollback_id {text}
);
CREATE TABLE {s}command_runs (
    deployment_id {text} NOT NULL,
    step {text} NOT NULL,
    state {text} NOT NULL,
    started_at {real} NOT NULL,
    finished_at {real},
    exit_code {integer},
    detail {text},
    PRIMARY KEY (deployment_id, step)
)
"""
"""Version 3: deploy freezes, and what each command step last did (a finished one is not run again)."""

SQLITE_MIGRATIONS: dict[int, str] = {
    # IF NOT EXISTS: files written before the rollback tables were versioned already have them.
    1: f"""
CREATE TABLE IF NOT EXISTS rollbacks {_SQLITE_ROLLBACKS.format(unique=" UNIQUE")};
CREATE TABLE IF NOT EXISTS rollback_steps (
    rollback_id TEXT NOT NULL REFERENCES rollbacks(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    detail TEXT,
    PRIMARY KEY (rollback_id, position)
);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    image TEXT,
    previous_image TEXT,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    window_ends_at REAL NOT NULL,
    finished_at REAL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_service ON deployments (service, started_at);
CREATE TABLE IF NOT EXISTS rule_states (
    deployment_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (deployment_id, rule)
);
CREATE TABLE IF NOT EXISTS mutes (
    service TEXT NOT NULL,
    rule TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (service, rule)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    deployment_id TEXT,
    rollback_id TEXT,
    detail TEXT NOT NULL
);
""",
    # SQLite cannot drop a UNIQUE constraint: the table is made again without it
    # (rollback_steps keeps its rows; its reference follows the name).
    2: f"""
CREATE TABLE rollbacks_v2 {_SQLITE_ROLLBACKS.format(unique="")};
INSERT INTO rollbacks_v2 SELECT id, deployment_id, service, state, reasons, target, proposed_at, execute_at,
    started_at, finished_at, error FROM rollbacks;
DROP TABLE rollbacks;
ALTER TABLE rollbacks_v2 RENAME TO rollbacks;
CREATE UNIQUE INDEX rollbacks_open ON rollbacks (deployment_id)
    WHERE state IN ('pending', 'awaiting_approval', 'executing');
CREATE INDEX rollbacks_deployment ON rollbacks (deployment_id, proposed_at);
CREATE INDEX rollbacks_state ON rollbacks (state, proposed_at);
CREATE INDEX IF NOT EXISTS audit_deployment ON audit (deployment_id, seq);
ALTER TABLE deployments ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX deployments_idempotency_key ON deployments (idempotency_key);
""",
    3: _V3.format(s="", text="TEXT", real="REAL", integer="INTEGER"),
}

POSTGRES_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE {s}.rollbacks (
    id text PRIMARY KEY,
    deployment_id text NOT NULL UNIQUE,
    service text NOT NULL,
    state text NOT NULL,
    reasons text NOT NULL,
    target text NOT NULL,
    proposed_at double precision NOT NULL,
    execute_at double precision,
    started_at double precision,
    finished_at double precision,
    error text
);
CREATE INDEX rollbacks_state ON {s}.rollbacks (state, proposed_at);
CREATE TABLE {s}.rollback_steps (
    rollback_id text NOT NULL REFERENCES {s}.rollbacks (id),
    position integer NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    started_at double precision,
    finished_at double precision,
    error text,
    detail text,
    PRIMARY KEY (rollback_id, position)
);
CREATE TABLE {s}.deployments (
    id text PRIMARY KEY,
    service text NOT NULL,
    image text,
    previous_image text,
    state text NOT NULL,
    started_at double precision NOT NULL,
    window_ends_at double precision NOT NULL,
    finished_at double precision,
    data text NOT NULL
);
CREATE INDEX deployments_service ON {s}.deployments (service, started_at);
CREATE TABLE {s}.rule_states (
    deployment_id text NOT NULL,
    rule text NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (deployment_id, rule)
);
CREATE TABLE {s}.mutes (
    service text NOT NULL,
    rule text NOT NULL,
    until double precision NOT NULL,
    PRIMARY KEY (service, rule)
);
CREATE TABLE {s}.audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at double precision NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    deployment_id text,
    rollback_id text,
    detail text NOT NULL
);
CREATE INDEX audit_deployment ON {s}.audit (deployment_id, seq);
""",
    # The name PostgreSQL gave version 1's UNIQUE (deployment_id); no IF EXISTS, so
    # that a schema where it is called otherwise fails loudly instead of keeping it.
    2: """
ALTER TABLE {s}.rollbacks DROP CONSTRAINT rollbacks_deployment_id_key;
CREATE UNIQUE INDEX rollbacks_open ON {s}.rollbacks (deployment_id)
    WHERE state IN ('pending', 'awaiting_approval', 'executing');
CREATE INDEX rollbacks_deployment ON {s}.rollbacks (deployment_id, proposed_at);
ALTER TABLE {s}.deployments ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX deployments_idempotency_key ON {s}.deployments (idempotency_key);
""",
    3: _V3.format(s="{s}.", text="text", real="double precision", integer="integer"),
}


def statements(script: str) -> list[str]:
    """A migration's statements one by one (none of them holds a ``;`` of its own)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
