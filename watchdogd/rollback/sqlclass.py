"""What each statement of some SQL does, read by PostgreSQL's own parser (pglast, libpg_query).

Pure: no database. ``classify`` answers, per statement, one ``Classified``:

- ``schema_change``: DDL on objects in named schemas (``destroys_data`` when it
  drops a table, a materialized view or a column);
- ``data_change``: INSERT, UPDATE, DELETE, MERGE, TRUNCATE (``destroys_data``
  for DELETE and TRUNCATE);
- ``read``: a plain SELECT;
- ``forbidden``: never accepted from a request, with the reason: roles and
  grants, ``ALTER SYSTEM``, databases, extensions, ``COPY``, ``DO`` blocks and
  function bodies (dynamic SQL), session settings, and anything watchdogd does
  not know to be a schema change.

``refusals`` applies the rule for SQL sent inside a request (``database.sql_from_api``):
only schema changes confined to the service's schemas, calling only a few
built-in functions. ``verify_refusals`` does the same for verify queries: one
SELECT that reads only the catalog. pglast is imported here only, on first
use: a daemon whose config takes no SQL from requests never loads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["schema_change", "data_change", "read", "forbidden"]

DEFAULT_SCHEMA = "<default>"
"""The schema of an unqualified name: the first of the service's schemas."""

SAFE_FUNCTIONS = frozenset(
    {
        "now",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "gen_random_uuid",
        "lower",
        "upper",
        "length",
        "char_length",
        "btrim",
        "trim",
        "to_char",
        "date_trunc",
        "array_length",
        "count",
        "to_regclass",
        "to_regtype",
        "to_regnamespace",
        "to_regproc",
        "jsonb_build_object",
        "json_build_object",
        "jsonb_build_array",
    }
)
"""Functions SQL from a request may call: built-in, without side effects or access to other data."""

CATALOG_RELATIONS = frozenset(
    {
        "tables",
        "columns",
        "views",
        "table_constraints",
        "key_column_usage",
        "constraint_column_usage",
        "referential_constraints",
        "check_constraints",
        "sequences",
        "schemata",
        "routines",
        "triggers",
        "pg_class",
        "pg_attribute",
        "pg_type",
        "pg_enum",
        "pg_index",
        "pg_indexes",
        "pg_namespace",
        "pg_constraint",
        "pg_tables",
        "pg_views",
        "pg_sequences",
        "pg_proc",
        "pg_trigger",
        "pg_matviews",
    }
)
"""Relations of ``information_schema`` and ``pg_catalog`` a verify query from a request may read:
they describe the schema, never rows nor sessions."""
_CATALOG_SCHEMAS = ("information_schema", "pg_catalog")

_SCHEMA_CHANGES = frozenset(
    {
        "AlterTableStmt",
        "AlterEnumStmt",
        "AlterSeqStmt",
        "AlterDomainStmt",
        "CommentStmt",
        "CompositeTypeStmt",
        "CreateDomainStmt",
        "CreateEnumStmt",
        "CreateSeqStmt",
        "CreateStmt",
        "CreateTrigStmt",
        "DropStmt",
        "IndexStmt",
        "RenameStmt",
        "ViewStmt",
        "CreateTableAsStmt",
        "RefreshMatViewStmt",
    }
)
_DATA_CHANGES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt"})
_FORBIDDEN = {
    "CreateRoleStmt": "creates a role",
    "AlterRoleStmt": "changes a role",
    "AlterRoleSetStmt": "changes a role's settings",
    "DropRoleStmt": "drops a role",
    "GrantStmt": "grants or revokes privileges",
    "GrantRoleStmt": "grants or revokes a role",
    "AlterDefaultPrivilegesStmt": "changes default privileges",
    "ReassignOwnedStmt": "reassigns owned objects",
    "DropOwnedStmt": "drops a role's objects",
    "AlterOwnerStmt": "changes an owner",
    "AlterSystemStmt": "changes the server's configuration (ALTER SYSTEM)",
    "CreatedbStmt": "creates a database",
    "DropdbStmt": "drops a database",
    "AlterDatabaseStmt": "changes a database",
    "AlterDatabaseSetStmt": "changes a database's settings",
    "CreateExtensionStmt": "creates an extension",
    "AlterExtensionStmt": "changes an extension",
    "AlterExtensionContentsStmt": "changes an extension",
    "CopyStmt": "copies data in or out (COPY)",
    "DoStmt": "runs a DO block (procedural code)",
    "CreateFunctionStmt": "creates a function (its body is code run later)",
    "AlterFunctionStmt": "changes a function",
    "CallStmt": "calls a procedure",
    "ExecuteStmt": "executes a prepared statement (dynamic SQL)",
    "PrepareStmt": "prepares a statement (dynamic SQL)",
    "VariableSetStmt": "changes a session setting",
    "CreateSchemaStmt": "creates a schema",
    "AlterObjectSchemaStmt": "moves an object to another schema",
    "TransactionStmt": "controls the transaction",
    "LoadStmt": "loads a shared library",
    "CreateTableSpaceStmt": "creates a tablespace",
    "DropTableSpaceStmt": "drops a tablespace",
    "CreateFdwStmt": "creates a foreign-data wrapper",
    "CreateForeignServerStmt": "creates a foreign server",
    "CreateUserMappingStmt": "creates a user mapping",
    "ListenStmt": "listens on a channel",
    "NotifyStmt": "notifies a channel",
    "LockStmt": "locks tables",
    "VacuumStmt": "vacuums",
    "ClusterStmt": "clusters a table",
    "ReindexStmt": "reindexes",
    "CheckPointStmt": "forces a checkpoint",
    "CreateEventTrigStmt": "creates an event trigger",
    "CreatePublicationStmt": "creates a publication",
    "CreateSubscriptionStmt": "creates a subscription",
    "SecLabelStmt": "sets a security label",
}


class SqlSyntaxError(ValueError):
    """SQL PostgreSQL's parser does not accept; the message names the position."""


@dataclass(frozen=True, slots=True)
class Classified:
    """One statement and what it does."""

    text: str
    """As written, without the ``;``."""
    line: int
    """1-based line of its start in the SQL given."""
    node: str
    """The parser's name for it: ``DropStmt``, ``AlterTableStmt``, ..."""
    kind: Kind
    schemas: tuple[str, ...]
    """The schemas of the objects it names (DEFAULT_SCHEMA for an unqualified name), sorted."""
    functions: tuple[str, ...] = ()
    """The functions its expressions call, qualified as written, sorted."""
    destroys_data: bool = False
    reason: str = ""
    """For ``forbidden``: why."""

    def short(self, limit: int = 80) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def classify(sql: str) -> list[Classified]:
    """Every statement of ``sql``, in order; SqlSyntaxError when PostgreSQL would not parse it."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        raise SqlSyntaxError(f"line {_line_of(sql, where)}: {exc.args[0]}") from None
    out = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        chunk = sql[start:end]  # pglast's offsets count characters
        lead = len(chunk) - len(chunk.lstrip())
        line = sql.count("\n", 0, start) + chunk[:lead].count("\n") + 1
        out.append(_classify_one(raw.stmt, chunk.strip(), line))
    return out


def refusals(statements: Sequence[Classified], schemas: Sequence[str]) -> list[str]:
    """Why SQL sent in a request may not run (empty when it may): one reason per statement refused.

    Accepted: schema changes whose objects all lie in ``schemas`` (unqualified
    names count as the first of them), calling only SAFE_FUNCTIONS.
    """
    problems = []
    for stmt in statements:
        why = _refusal(stmt, schemas)
        if why:
            problems.append(f"line {stmt.line}: {why}: {stmt.short()}")
    return problems


def verify_refusals(query: str) -> list[str]:
    """Why a verify query sent in a request may not run: it must be one SELECT reading only the catalog."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        raws = parse_sql(query)
    except ParseError as exc:
        return [f"not valid SQL: {exc.args[0]}"]
    if len(raws) != 1:
        return [f"a verify query is one statement, not {len(raws)}"]
    node = raws[0].stmt
    if type(node).__name__ != "SelectStmt" or getattr(node, "intoClause", None) is not None:
        return [f"a verify query is a SELECT, not {type(node).__name__}"]
    problems = []
    for schema, name in sorted(set(_relations(node))):
        if schema not in (DEFAULT_SCHEMA, *_CATALOG_SCHEMAS) or name not in CATALOG_RELATIONS:
            shown = name if schema == DEFAULT_SCHEMA else f"{schema}.{name}"
            problems.append(f"reads {shown}: verify queries from a request read only the catalog")
    for func in sorted(set(_functions(node))):
        if not _safe_function(func):
            problems.append(f"calls {func}(): not among the functions a request's SQL may call")
    return problems


# --- one statement ---------------------------------------------------------------------------


def _classify_one(node: Any, text: str, line: int) -> Classified:
    name = type(node).__name__
    schemas = tuple(sorted(set(_schemas(node))))
    functions = tuple(sorted(set(_functions(node))))

    def make(kind: Kind, destroys: bool = False, reason: str = "") -> Classified:
        return Classified(text, line, name, kind, schemas, functions, destroys, reason)

    if name in _FORBIDDEN:
        reason = _FORBIDDEN[name]
        if name == "CopyStmt" and getattr(node, "is_program", False):
            reason = "runs a program on the server (COPY ... PROGRAM)"
        return make("forbidden", reason=reason)
    if name == "SelectStmt":
        if getattr(node, "intoClause", None) is not None:
            return make("schema_change")  # SELECT INTO creates a table
        return make("read")
    if name in _DATA_CHANGES:
        return make("data_change", destroys=name in ("DeleteStmt", "TruncateStmt"))
    if name not in _SCHEMA_CHANGES:
        return make("forbidden", reason=f"not a schema change watchdogd knows ({name})")
    why = _forbidden_ddl(node, name)
    if why:
        return make("forbidden", reason=why)
    return make("schema_change", destroys=_destroys(node, name))


def _forbidden_ddl(node: Any, name: str) -> str:
    from pglast.enums import AlterTableType, ObjectType

    if name == "DropStmt" and node.removeType in (
        ObjectType.OBJECT_SCHEMA,
        ObjectType.OBJECT_EXTENSION,
        ObjectType.OBJECT_DATABASE,
        ObjectType.OBJECT_ROLE,
        ObjectType.OBJECT_TABLESPACE,
        ObjectType.OBJECT_EVENT_TRIGGER,
        ObjectType.OBJECT_FDW,
        ObjectType.OBJECT_FOREIGN_SERVER,
        ObjectType.OBJECT_PUBLICATION,
        ObjectType.OBJECT_SUBSCRIPTION,
    ):
        return f"drops {ObjectType(node.removeType).name.removeprefix('OBJECT_').lower().replace('_', ' ')}"
    if name == "RenameStmt" and node.renameType in (
        ObjectType.OBJECT_SCHEMA,
        ObjectType.OBJECT_DATABASE,
        ObjectType.OBJECT_ROLE,
        ObjectType.OBJECT_TABLESPACE,
    ):
        return "renames a schema, database, role or tablespace"
    if name == "AlterTableStmt":
        for cmd in node.cmds or ():
            if cmd.subtype == AlterTableType.AT_ChangeOwner:
                return "changes an owner"
            if cmd.subtype == AlterTableType.AT_SetTableSpace:
                return "moves a table to another tablespace"
    if name == "CommentStmt" and node.objtype in (
        ObjectType.OBJECT_SCHEMA,
        ObjectType.OBJECT_DATABASE,
        ObjectType.OBJECT_ROLE,
        ObjectType.OBJECT_EXTENSION,
    ):
        return "comments on a schema, database, role or extension"
    return ""


def _destroys(node: Any, name: str) -> bool:
    from pglast.enums import AlterTableType, ObjectType

    if name == "DropStmt":
        return node.removeType in (
            ObjectType.OBJECT_TABLE,
            ObjectType.OBJECT_MATVIEW,
            ObjectType.OBJECT_FOREIGN_TABLE,
        )
    if name == "AlterTableStmt":
        return any(cmd.subtype == AlterTableType.AT_DropColumn for cmd in node.cmds or ())
    return False


def _refusal(stmt: Classified, schemas: Sequence[str]) -> str:
    if stmt.kind == "forbidden":
        return stmt.reason
    if stmt.kind != "schema_change":
        return f"{stmt.kind.replace('_', ' ')}, not a schema change"
    others = [s for s in stmt.schemas if s != DEFAULT_SCHEMA and s not in schemas]
    if others:
        return f"names objects in schema {', '.join(others)}, not the service's ({', '.join(schemas)})"
    calls = [f for f in stmt.functions if not _safe_function(f)]
    if calls:
        return f"calls {', '.join(calls)}: SQL from a request may call only a few built-in functions"
    return ""


def _safe_function(name: str) -> bool:
    return name.removeprefix("pg_catalog.") in SAFE_FUNCTIONS


# --- names in a tree -------------------------------------------------------------------------


def _walk(value: Any) -> Iterator[Any]:
    from pglast import ast

    if isinstance(value, tuple | list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, ast.Node):
        yield value
        for slot in getattr(type(value), "__slots__", ()):
            yield from _walk(getattr(value, slot, None))


def _strings(names: Any) -> list[str]:
    return [n.sval for n in names or () if hasattr(n, "sval")]


def _schema_of(parts: list[str]) -> str | None:
    return parts[-2] if len(parts) >= 2 else DEFAULT_SCHEMA if parts else None


def _named_after_table() -> frozenset[int]:
    from pglast.enums import ObjectType

    return frozenset(
        {
            ObjectType.OBJECT_COLUMN,
            ObjectType.OBJECT_TRIGGER,
            ObjectType.OBJECT_RULE,
            ObjectType.OBJECT_POLICY,
            ObjectType.OBJECT_TABCONSTRAINT,
        }
    )


def _relations(node: Any) -> Iterator[tuple[str, str]]:
    for item in _walk(node):
        if type(item).__name__ == "RangeVar":
            yield item.schemaname or DEFAULT_SCHEMA, item.relname


def _functions(node: Any) -> Iterator[str]:
    for item in _walk(node):
        kind = type(item).__name__
        if kind in ("FuncCall", "CreateTrigStmt"):
            yield ".".join(_strings(item.funcname))


def _schemas(node: Any) -> Iterator[str]:
    """The schemas of every object a statement names; built-in types (pg_catalog) left out."""
    named_after_table = _named_after_table()

    for item in _walk(node):
        kind = type(item).__name__
        schema: str | None = None
        if kind == "RangeVar":
            schema = item.schemaname or DEFAULT_SCHEMA
        elif kind == "TypeName":
            parts = _strings(item.names)
            if parts and parts[0] != "pg_catalog":
                schema = _schema_of(parts)
        elif kind in ("FuncCall", "CreateTrigStmt"):
            parts = _strings(item.funcname)
            if parts[:1] != ["pg_catalog"]:  # built-in functions are judged by name (SAFE_FUNCTIONS)
                schema = _schema_of(parts)
        elif kind == "ObjectWithArgs":
            schema = _schema_of(_strings(item.objname))
        elif kind in ("CreateEnumStmt", "AlterEnumStmt"):
            schema = _schema_of(_strings(item.typeName))
        elif kind == "CreateDomainStmt":
            schema = _schema_of(_strings(item.domainname))
        elif kind in ("DropStmt", "CommentStmt", "RenameStmt"):
            objects = item.objects if kind == "DropStmt" else (item.object,)
            what = item.removeType if kind == "DropStmt" else getattr(item, "objtype", None)
            for obj in objects or ():
                if isinstance(obj, tuple | list):
                    parts = _strings(obj)
                    if what in named_after_table:  # [schema.]table.name
                        parts = parts[:-1]
                    found = _schema_of(parts)
                    if found is not None:
                        yield found
        if schema is not None:
            yield schema


def _line_of(sql: str, location: int | None) -> int:
    if location is None or location < 0:
        return 1
    return sql.count("\n", 0, location) + 1
