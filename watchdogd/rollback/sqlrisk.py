"""What each statement of a migration's down SQL risks, read by PostgreSQL's own parser.

Pure: no database. ``risks`` gives every statement one verdict:

- ``run``: changes the schema without touching rows (CREATE, ALTER ... ADD,
  DROP INDEX/VIEW/CONSTRAINT, INSERT, plain reads of the catalog);
- ``count``: destroys or rewrites rows that the assessment counts in the live
  database (DROP TABLE, DROP COLUMN, ALTER COLUMN TYPE, DELETE, UPDATE,
  TRUNCATE and the tables its CASCADE reaches, DROP SCHEMA, DROP TYPE ...
  CASCADE and the columns of that type, data-modifying CTEs);
- ``approve``: what watchdogd cannot judge from the text (DO blocks, EXECUTE,
  procedures, functions outside a short list, statements it does not know):
  they count as destroying an unknown number of rows;
- ``refuse``: never run by a rollback, whatever ``database.destructive`` says:
  roles, grants, ownership, ``ALTER SYSTEM``, databases, extensions,
  tablespaces, ``COPY`` (a program, a server file or a client's stdin),
  ``LOAD``, transaction control, ``SET ROLE``.

``database.destructive`` applies to what ``count`` finds and to ``approve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from watchdogd.rollback import sqlclass

Verdict = Literal["run", "count", "approve", "refuse"]
TargetKind = Literal["table", "column", "schema", "type", "referencing"]

READ_FUNCTIONS = sqlclass.SAFE_FUNCTIONS | frozenset(
    {"coalesce", "nullif", "greatest", "least", "format", "concat", "exists", "to_regrole"}
)
"""Functions a down statement may call without an operator judging it (no side effects)."""

SEQUENCE_FUNCTIONS = frozenset({"setval", "nextval"})
"""Functions whose effect a transaction's rollback does not undo."""

_REFUSE_NODES = {
    "CreateRoleStmt",
    "AlterRoleStmt",
    "AlterRoleSetStmt",
    "DropRoleStmt",
    "GrantStmt",
    "GrantRoleStmt",
    "AlterDefaultPrivilegesStmt",
    "ReassignOwnedStmt",
    "DropOwnedStmt",
    "AlterOwnerStmt",
    "AlterSystemStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "AlterDatabaseStmt",
    "AlterDatabaseSetStmt",
    "AlterDatabaseRefreshCollStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "CopyStmt",
    "LoadStmt",
    "TransactionStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
    "AlterTableSpaceOptionsStmt",
    "CreateFdwStmt",
    "CreateForeignServerStmt",
    "CreateUserMappingStmt",
    "AlterUserMappingStmt",
    "CreateEventTrigStmt",
    "CreatePublicationStmt",
    "CreateSubscriptionStmt",
    "AlterSubscriptionStmt",
    "CheckPointStmt",
    "VacuumStmt",
    "ClusterStmt",
    "ListenStmt",
    "NotifyStmt",
    "SecLabelStmt",
    "ImportForeignSchemaStmt",
}
_APPROVE_NODES = {
    "DoStmt": "runs a DO block (code watchdogd cannot read)",
    "ExecuteStmt": "executes a prepared statement (dynamic SQL)",
    "PrepareStmt": "prepares a statement (dynamic SQL)",
    "CallStmt": "calls a procedure (code watchdogd cannot read)",
    "MergeStmt": "merges rows (may update or delete them)",
    "CreateFunctionStmt": "creates a function (its body runs later)",
    "CreateTrigStmt": "creates a trigger (its function runs on later writes)",
    "RuleStmt": "creates a rule (it rewrites later writes)",
    "LockStmt": "locks tables explicitly",
}


@dataclass(frozen=True, slots=True)
class Target:
    """Something whose rows the assessment counts in the live database."""

    kind: TargetKind
    """table (its rows), column (its non-null values), schema (every table in it), type (every column of
    that type), referencing (every table whose foreign keys reach this one, as TRUNCATE ... CASCADE)."""
    schema: str | None
    """None: unqualified, found through the search path."""
    name: str
    column: str | None = None
    verb: str = "drops"
    """What the statement does to those rows: drops, empties, deletes, updates, changes the type of."""

    @property
    def regclass(self) -> str:
        name = _quote(self.name)
        return f"{_quote(self.schema)}.{name}" if self.schema else name


@dataclass(frozen=True, slots=True)
class Risk:
    """One statement of the down SQL and its verdict."""

    line: int
    text: str
    node: str
    verdict: Verdict
    reason: str = ""
    targets: tuple[Target, ...] = ()
    sequences: tuple[str, ...] = ()
    """setval/nextval calls: not undone by a rollback, so never rehearsed."""

    def short(self, limit: int = 80) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def risks(sql: str) -> list[Risk]:
    """Every statement's risk; SqlSyntaxError when PostgreSQL would not parse ``sql``."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        line = sql.count("\n", 0, where) + 1 if where is not None and where >= 0 else 1
        raise sqlclass.SqlSyntaxError(f"line {line}: {exc.args[0]}") from None
    out = []
    seen, line = 0, 1  # lines counted once, statement after statement
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        chunk = sql[start:end]
        lead = len(chunk) - len(chunk.lstrip())
        line += sql.count("\n", seen, start + lead)
        seen = start + lead
        out.append(_risk(raw.stmt, chunk.strip(), line))
    return out


def _risk(node: Any, text: str, line: int) -> Risk:
    from pglast.enums import AlterTableType, DropBehavior, ObjectType

    name = type(node).__name__
    functions = {f.removeprefix("pg_catalog.") for f in sqlclass._functions(node)}
    sequences = tuple(sorted(functions & SEQUENCE_FUNCTIONS))

    def make(verdict: Verdict, reason: str = "", targets: tuple[Target, ...] = ()) -> Risk:
        return Risk(line, text, name, verdict, reason, targets, sequences)

    if name in _REFUSE_NODES:
        return make("refuse", _refusal(node, name))
    if name == "VariableSetStmt" and node.name in ("role", "session_authorization"):
        return make("refuse", "changes the session's role")
    if name == "DropStmt" and node.removeType in (
        ObjectType.OBJECT_DATABASE,
        ObjectType.OBJECT_ROLE,
        ObjectType.OBJECT_EXTENSION,
        ObjectType.OBJECT_TABLESPACE,
        ObjectType.OBJECT_EVENT_TRIGGER,
        ObjectType.OBJECT_FDW,
        ObjectType.OBJECT_FOREIGN_SERVER,
        ObjectType.OBJECT_PUBLICATION,
        ObjectType.OBJECT_SUBSCRIPTION,
    ):
        what = ObjectType(node.removeType).name.removeprefix("OBJECT_").lower().replace("_", " ")
        return make("refuse", f"drops a {what}")
    if name == "AlterTableStmt" and any(
        cmd.subtype in (AlterTableType.AT_ChangeOwner, AlterTableType.AT_SetTableSpace)
        for cmd in node.cmds or ()
    ):
        return make("refuse", "changes an owner or a tablespace")
    if name == "RenameStmt" and node.renameType in (
        ObjectType.OBJECT_DATABASE,
        ObjectType.OBJECT_ROLE,
        ObjectType.OBJECT_TABLESPACE,
    ):
        return make("refuse", "renames a database, role or tablespace")
    if name in _APPROVE_NODES:
        return make("approve", _APPROVE_NODES[name])

    targets = list(_writes(node))  # DELETE/UPDATE anywhere, data-modifying CTEs included
    if name == "DropStmt":
        cascade = node.behavior == DropBehavior.DROP_CASCADE
        for obj in node.objects or ():
            parts = sqlclass._strings(obj if isinstance(obj, tuple | list) else getattr(obj, "names", (obj,)))
            if not parts:
                continue
            if node.removeType in (
                ObjectType.OBJECT_TABLE,
                ObjectType.OBJECT_FOREIGN_TABLE,
                ObjectType.OBJECT_MATVIEW,
            ):
                targets.append(_target("table", parts))
            elif node.removeType == ObjectType.OBJECT_SCHEMA:
                targets.append(Target("schema", None, parts[-1]))
            elif node.removeType in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN) and cascade:
                targets.append(_target("type", parts))
    elif name == "AlterTableStmt":
        rel = node.relation
        for cmd in node.cmds or ():
            if cmd.subtype == AlterTableType.AT_DropColumn:
                targets.append(Target("column", rel.schemaname, rel.relname, cmd.name))
            elif cmd.subtype == AlterTableType.AT_AlterColumnType:
                targets.append(Target("column", rel.schemaname, rel.relname, cmd.name, "changes the type of"))
    elif name == "TruncateStmt":
        for rel in node.relations or ():
            targets.append(Target("table", rel.schemaname, rel.relname, verb="empties"))
            if node.behavior == DropBehavior.DROP_CASCADE:
                targets.append(Target("referencing", rel.schemaname, rel.relname, verb="empties"))
    elif name not in sqlclass._SCHEMA_CHANGES | {"SelectStmt", "InsertStmt", "VariableSetStmt"} | {
        "CreateSchemaStmt",
        "AlterObjectSchemaStmt",
        "CommentStmt",
        "DeleteStmt",
        "UpdateStmt",
    }:
        return make("approve", f"not a statement watchdogd can judge ({name})")
    others = sorted(f for f in functions if f not in READ_FUNCTIONS)
    if others:
        return make(
            "approve", f"calls {', '.join(others)}, whose effect watchdogd cannot judge", tuple(targets)
        )
    if targets:
        return make("count", "", tuple(targets))
    return make("run")


def _writes(node: Any) -> list[Target]:
    out = []
    for item in sqlclass._walk(node):
        kind = type(item).__name__
        if kind in ("DeleteStmt", "UpdateStmt") and item.relation is not None:
            verb = "deletes" if kind == "DeleteStmt" else "updates"
            out.append(Target("table", item.relation.schemaname, item.relation.relname, verb=verb))
    return out


def _target(kind: TargetKind, parts: list[str]) -> Target:
    return Target(kind, parts[-2] if len(parts) >= 2 else None, parts[-1])


def _refusal(node: Any, name: str) -> str:
    if name == "CopyStmt":
        if getattr(node, "is_program", False):
            return "runs a program on the server (COPY ... PROGRAM)"
        if getattr(node, "filename", None) is None:
            way = "FROM STDIN: the rollback sends no data" if node.is_from else "TO STDOUT: nothing reads it"
            return f"copies {way}; put the rows in INSERT statements"
        return "reads or writes a file on the server (COPY)"
    if name == "TransactionStmt":
        return "controls the transaction: watchdogd opens and commits it (see -- watchdogd:no-transaction)"
    reason = sqlclass._FORBIDDEN.get(name)
    return reason or f"is never run by a rollback ({name})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
