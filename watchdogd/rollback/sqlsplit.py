"""Rollback SQL read as PostgreSQL reads it: tokens, statements, phases.

Pure: no database. The lexer knows enough of PostgreSQL's syntax to find
where statements end (quotes, ``E''`` escapes, quoted identifiers,
dollar-quoting, line and nested block comments) and to tell what a
statement does from its leading words.

A script has up to two phases. Everything before a line
``-- watchdogd:no-transaction`` runs in one transaction; everything after it
runs after the commit, one statement at a time. Another directive,
``-- watchdogd:previous-version VALUE``, names the version the app's own
migration table goes back to (Alembic's down revision, golang-migrate's
previous version); ``-- watchdogd:changeset FILE::ID::AUTHOR`` names the
Liquibase changeset whose ``databasechangelog`` row is deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from watchdogd.errors import RollbackError

TokenKind = Literal["word", "ident", "string", "number", "punct", "comment", "param"]

_WORD_START = re.compile(r"[A-Za-z_\u0080-\uffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_NUMBER = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?")
_DIRECTIVE = re.compile(r"^--\s*watchdogd:(\S+)\s*(.*?)\s*$")
DIRECTIVES = ("no-transaction", "previous-version", "changeset")


class ScriptError(RollbackError):
    """Rollback SQL that cannot be read or must not run; the message names the line."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    """As written; for ``word`` folded to lower case, for ``ident`` unquoted."""
    start: int
    end: int
    line: int


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    """As written, from its first word to its last, without the ``;``."""
    line: int
    """1-based line of its first word in the script."""
    tokens: tuple[Token, ...] = field(repr=False, default=())
    """Its tokens, comments left out."""

    @property
    def words(self) -> tuple[str, ...]:
        """Bare words in lower case; quoted names, strings and numbers as ``?``."""
        return tuple(t.text if t.kind == "word" else "?" for t in self.tokens)

    def short(self, limit: int = 80) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Script:
    """A rollback script split into its two phases."""

    transactional: tuple[Statement, ...]
    deferred: tuple[Statement, ...] = ()
    """The no-transaction phase: after the commit, one statement at a time."""
    previous_version: str | None = None
    changeset: str | None = None
    """Liquibase's ``FILE::ID::AUTHOR`` of the changeset this script undoes."""


def tokenize(sql: str) -> list[Token]:
    """Every token of ``sql``, comments included; raises ScriptError if a quote is left open."""
    out: list[Token] = []
    pos = 0
    line = 1
    n = len(sql)
    while pos < n:
        ch = sql[pos]
        if ch == "\n":
            line += 1
            pos += 1
            continue
        if ch.isspace():
            pos += 1
            continue
        start, start_line = pos, line
        if sql.startswith("--", pos):
            end = sql.find("\n", pos)
            end = n if end < 0 else end
            out.append(Token("comment", sql[pos:end], pos, end, line))
            pos = end
            continue
        if sql.startswith("/*", pos):
            depth, pos = 1, pos + 2
            while depth and pos < n:
                if sql.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif sql.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
            if depth:
                raise ScriptError(f"line {start_line}: unterminated /* comment")
            text = sql[start:pos]
            out.append(Token("comment", text, start, pos, start_line))
            line += text.count("\n")
            continue
        if ch in "eE" and sql.startswith("'", pos + 1) and not _glued(sql, pos):
            pos = _quoted(sql, pos + 1, "'", start_line, backslash=True)
            out.append(Token("string", sql[start:pos], start, pos, start_line))
        elif ch == "'":
            pos = _quoted(sql, pos, "'", start_line, backslash=False)
            out.append(Token("string", sql[start:pos], start, pos, start_line))
        elif ch == '"':
            pos = _quoted(sql, pos, '"', start_line, backslash=False)
            out.append(Token("ident", sql[start + 1 : pos - 1].replace('""', '"'), start, pos, start_line))
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, pos)) and not _glued(sql, pos):
            close = sql.find(tag.group(0), tag.end())
            if close < 0:
                raise ScriptError(f"line {start_line}: unterminated dollar-quoted string {tag.group(0)}")
            pos = close + len(tag.group(0))
            out.append(Token("string", sql[start:pos], start, pos, start_line))
        elif ch == "$" and pos + 1 < n and sql[pos + 1].isdigit():
            pos += 1
            while pos < n and sql[pos].isdigit():
                pos += 1
            out.append(Token("param", sql[start:pos], start, pos, start_line))
        elif _WORD_START.match(ch):
            match = _WORD.match(sql, pos + 1)
            pos = match.end() if match else pos + 1
            out.append(Token("word", sql[start:pos].lower(), start, pos, start_line))
        elif number := _NUMBER.match(sql, pos):
            pos = number.end()
            out.append(Token("number", sql[start:pos], start, pos, start_line))
        else:
            pos += 1
            out.append(Token("punct", ch, start, pos, start_line))
        line += sql.count("\n", start, pos)
    return out


def _glued(sql: str, pos: int) -> bool:
    """Whether ``sql[pos]`` continues a word (``abc$x$`` or ``namee'...``), not a new token."""
    return pos > 0 and bool(re.match(r"[A-Za-z0-9_$\u0080-\uffff]", sql[pos - 1]))


def _quoted(sql: str, pos: int, quote: str, line: int, *, backslash: bool) -> int:
    """End (exclusive) of the quoted text opening at ``pos``; a doubled quote escapes it."""
    i = pos + 1
    n = len(sql)
    while i < n:
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    what = "identifier" if quote == '"' else "string"
    raise ScriptError(f"line {line}: unterminated quoted {what}")


def split(sql: str) -> tuple[list[Statement], list[tuple[Directive, int]]]:
    """Statements of ``sql`` and its directives, each with how many statements precede it."""
    statements: list[Statement] = []
    directives: list[tuple[Directive, int]] = []
    current: list[Token] = []

    def flush() -> None:
        if current:
            first, last = current[0], current[-1]
            statements.append(Statement(sql[first.start : last.end], first.line, tuple(current)))
            current.clear()

    for token in tokenize(sql):
        if token.kind == "comment":
            match = _DIRECTIVE.match(token.text)
            if match and _alone_on_line(sql, token.start):
                if current:
                    raise ScriptError(
                        f"line {token.line}: directive '{token.text.strip()}' inside a statement "
                        f"that starts at line {current[0].line}; end that statement with ';' first"
                    )
                directives.append((Directive(match.group(1), match.group(2), token.line), len(statements)))
            continue
        if token.kind == "punct" and token.text == ";":
            flush()
        else:
            current.append(token)
    flush()
    return statements, directives


def _alone_on_line(sql: str, pos: int) -> bool:
    line_start = sql.rfind("\n", 0, pos) + 1
    return not sql[line_start:pos].strip()


def parse_script(sql: str) -> Script:
    """Split ``sql`` into its phases and refuse what must not run; ScriptError names the line."""
    statements, directives = split(sql)
    cut: int | None = None
    previous: str | None = None
    changeset: str | None = None
    for directive, index in directives:
        if directive.name == "no-transaction":
            if cut is not None:
                raise ScriptError(f"line {directive.line}: a second '-- watchdogd:no-transaction' line")
            cut = index
        elif directive.name == "previous-version":
            if not directive.value or " " in directive.value:
                raise ScriptError(f"line {directive.line}: '-- watchdogd:previous-version' needs one value")
            previous = directive.value
        elif directive.name == "changeset":
            if directive.value.count("::") < 2:
                raise ScriptError(
                    f"line {directive.line}: '-- watchdogd:changeset' needs FILE::ID::AUTHOR, "
                    "as Liquibase prints a changeset"
                )
            changeset = directive.value
        else:
            known = ", ".join(DIRECTIVES)
            raise ScriptError(
                f"line {directive.line}: unknown directive 'watchdogd:{directive.name}' ({known})"
            )
    transactional = statements if cut is None else statements[:cut]
    deferred = [] if cut is None else statements[cut:]
    for stmt in statements:
        psql = psql_only(stmt)
        if psql:
            raise ScriptError(f"line {stmt.line}: {psql}: {stmt.short()}")
        control = transaction_control(stmt)
        if control:
            raise ScriptError(
                f"line {stmt.line}: {control} is not allowed in rollback SQL "
                f"(watchdogd runs the transaction itself): {stmt.short()}"
            )
    for stmt in transactional:
        reason = needs_no_transaction(stmt)
        if reason:
            raise ScriptError(
                f"line {stmt.line}: {reason} cannot run inside a transaction: {stmt.short()}; "
                "put it after a line '-- watchdogd:no-transaction'"
            )
    return Script(tuple(transactional), tuple(deferred), previous, changeset)


def psql_only(stmt: Statement) -> str | None:
    """What in ``stmt`` only psql understands, which watchdogd (sending SQL to the server) cannot run."""
    text = stmt.text.lstrip()
    if text.startswith("\\"):
        command = text.split(None, 1)[0]
        return f"psql meta-command {command}: watchdogd sends SQL to the server, not through psql; remove it"
    words = stmt.words
    if words[:1] == ("copy",) and "stdin" in words:
        return "COPY ... FROM STDIN reads data psql would send, which the rollback has not; use INSERT"
    if any(words[i : i + 2] == ("begin", "atomic") for i in range(len(words) - 1)):
        return (
            "a BEGIN ATOMIC function body cannot be split here; write the body dollar-quoted (AS $$ ... $$)"
        )
    return None


def transaction_control(stmt: Statement) -> str | None:
    """The transaction-control command ``stmt`` is, if it is one."""
    words = stmt.words
    first = words[0] if words else ""
    second = words[1] if len(words) > 1 else ""
    if first in ("begin", "commit", "end", "rollback", "abort", "savepoint", "release"):
        return first.upper()
    if first == "start" and second == "transaction":
        return "START TRANSACTION"
    if first == "prepare" and second == "transaction":
        return "PREPARE TRANSACTION"
    if first == "set" and second == "transaction":
        return "SET TRANSACTION"
    return None


def needs_no_transaction(stmt: Statement) -> str | None:
    """Why ``stmt`` cannot run in a transaction block, or None if it can."""
    words = stmt.words
    head = " ".join(words[:2])
    if words[:1] == ("create",) and "index" in words[:3] and "concurrently" in words[:4]:
        return "CREATE INDEX CONCURRENTLY"
    if head == "drop index" and words[2:3] == ("concurrently",):
        return "DROP INDEX CONCURRENTLY"
    if words[:1] == ("reindex",) and "concurrently" in words:
        return "REINDEX CONCURRENTLY"
    if words[:1] == ("vacuum",):
        return "VACUUM"
    if words[:1] == ("cluster",) and len(words) == 1:
        return "CLUSTER without a table"
    if head == "alter system":
        return "ALTER SYSTEM"
    if head in ("create database", "drop database", "create tablespace", "drop tablespace"):
        return head.upper()
    if head == "alter table" and "detach" in words and words[-1:] == ("concurrently",):
        return "DETACH PARTITION CONCURRENTLY"
    return None


@dataclass(frozen=True, slots=True)
class Drop:
    """Something a statement destroys that may hold data."""

    kind: Literal["table", "column", "truncate"]
    table: tuple[str, ...]
    """Its name, schema-qualified when written so (as PostgreSQL resolves: unquoted lower case)."""
    column: str | None
    line: int


def destructive(stmt: Statement) -> list[Drop]:
    """Tables and columns ``stmt`` drops or empties (DROP TABLE, ALTER TABLE ... DROP COLUMN, TRUNCATE)."""
    toks = list(stmt.tokens)
    words = stmt.words
    if words[:2] == ("drop", "table"):
        i = _skip(words, 2, ("if", "exists"))
        return [Drop("table", name, None, stmt.line) for name in _name_list(toks, i)]
    if words[:1] == ("truncate",):
        i = _skip(words, 1, ("table",))
        i = _skip(words, i, ("only",))
        return [Drop("truncate", name, None, stmt.line) for name in _name_list(toks, i)]
    if words[:2] == ("alter", "table"):
        i = _skip(words, 2, ("if", "exists"))
        i = _skip(words, i, ("only",))
        names = _name_list(toks, i, single=True)
        if not names:
            return []
        drops: list[Drop] = []
        for action in _actions(toks[_after_name(toks, i) :]):
            acts = tuple(t.text if t.kind == "word" else "?" for t in action)
            if acts[:1] != ("drop",) or acts[1:2] == ("constraint",):
                continue
            k = _skip(acts, 1, ("column",))
            k = _skip(acts, k, ("if", "exists"))
            if k < len(action) and action[k].kind in ("word", "ident"):
                drops.append(Drop("column", names[0], action[k].text, stmt.line))
        return drops
    return []


def _skip(words: tuple[str, ...], i: int, seq: tuple[str, ...]) -> int:
    return i + len(seq) if words[i : i + len(seq)] == seq else i


def _ident(token: Token) -> str:
    return token.text


def _actions(toks: list[Token]) -> list[list[Token]]:
    """The comma-separated actions of an ALTER TABLE, commas in parentheses ignored."""
    out: list[list[Token]] = [[]]
    depth = 0
    for token in toks:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif token.text == "," and depth == 0:
            out.append([])
            continue
        out[-1].append(token)
    return [a for a in out if a]


def _name_list(toks: list[Token], i: int, *, single: bool = False) -> list[tuple[str, ...]]:
    """Qualified names from ``toks[i]``: ``a, "B".c, ...`` until a word that is not a name."""
    names: list[tuple[str, ...]] = []
    while i < len(toks) and toks[i].kind in ("word", "ident"):
        parts = [_ident(toks[i])]
        i += 1
        while i + 1 < len(toks) and toks[i].text == "." and toks[i + 1].kind in ("word", "ident"):
            parts.append(_ident(toks[i + 1]))
            i += 2
        names.append(tuple(parts))
        if single or i >= len(toks) or toks[i].text != ",":
            break
        i += 1
    return names


def _after_name(toks: list[Token], i: int) -> int:
    """Index just past the qualified name starting at ``toks[i]``."""
    i += 1
    while i + 1 < len(toks) and toks[i].text == ".":
        i += 2
    return i
