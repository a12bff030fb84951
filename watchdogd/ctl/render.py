"""What ``ctl`` prints: lines and tables for a person, made safe for a terminal, and JSON for scripts."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any, TextIO

from watchdogd.config.types import format_duration

_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories a terminal acts on or hides instead of showing: controls (C0 with tab and
newline, DEL, C1), format characters (bidi overrides and isolates, zero-width ones), lone
surrogates, line and paragraph separators."""


def printable(text: str) -> str:
    """``text`` safe for a terminal: each character of an ``_UNSAFE`` category shown as an escape.

    ``"\\x1b[2J"`` instead of a cleared screen, ``"\\u202e"`` instead of reversed text. Every
    line ``ctl`` prints for a person goes through here; what it leaves is one line of visible text.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def say(line: str, out: TextIO, *, flush: bool = False) -> None:
    """Print one line for a person; see ``printable``."""
    print(printable(line), file=out, flush=flush)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def left(until: str | None, now: float) -> str:
    """Time from ``now`` to ``until`` (whole seconds), or ``-``."""
    end = parse_time(until)
    if end is None:
        return "-"
    return format_duration(max(0, round(end - now)))


def ago(since: str | None, now: float) -> str:
    start = parse_time(since)
    if start is None:
        return ""
    return format_duration(max(0, round(now - start))) + " ago"


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list[list[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart; the first row is the header. Cells are made printable."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def reasons_text(reasons: list[dict[str, Any]]) -> str:
    parts = []
    for reason in reasons:
        if "rule" in reason:
            parts.append(f"{reason['rule']} = {value_text(reason.get('value'))}")
        else:
            parts.append(f"{reason.get('operator', 'operator')}: {reason.get('reason', '')}")
    return "; ".join(parts) or "-"


def veto_left(rollback: dict[str, Any], now: float) -> str:
    state = rollback["state"]
    if state == "pending":
        return left(rollback["execute_at"], now)
    if state == "awaiting_approval":
        deadline = rollback.get("execute_at")
        return "needs approval" + (f" ({left(deadline, now)} left)" if deadline else "")
    return "-"


def status_lines(deployments: list[dict[str, Any]], rollbacks: list[dict[str, Any]], now: float) -> list[str]:
    if not deployments:
        return ["no deployments"]
    lines = table(
        [["DEPLOYMENT", "SERVICE", "STATE", "WINDOW LEFT", "IMAGE"]]
        + [
            [
                d["id"],
                d["service"],
                d["state"],
                left(d["window_ends_at"], now) if d["state"] == "watching" else "-",
                d.get("image") or "-",
            ]
            for d in deployments
        ]
    )
    out = [lines[0]]
    for line, deployment in zip(lines[1:], deployments, strict=True):
        out.append(line)
        rules = deployment.get("rules") or []
        if deployment["state"] == "watching" and rules:
            rows = [[r["name"], r["state"], value_text(r["value"]), ago(r["since"], now)] for r in rules]
            head = ["RULE", "STATE", "VALUE", "SINCE"]
            if any(r["state"] == "no_data" for r in rules):
                # a rule that cannot see says why: a refused query, a source down, warming up
                head.append("WHY NO DATA")
                for row, rule in zip(rows, rules, strict=True):
                    row.append(rule.get("reason") or "" if rule["state"] == "no_data" else "")
            out.extend(table([head, *rows], indent="    "))
    shown = {d["id"] for d in deployments}
    proposals = [r for r in rollbacks if r["deployment_id"] in shown]
    out.append("")
    if not proposals:
        out.append("no rollback proposals")
        return out
    out.extend(
        table(
            [["ROLLBACK", "DEPLOYMENT", "STATE", "VETO LEFT", "WHY"]]
            + [
                [r["id"], r["deployment_id"], r["state"], veto_left(r, now), reasons_text(r["reasons"])]
                for r in proposals
            ]
        )
    )
    return out


def rollback_line(verb: str, rollback: dict[str, Any], now: float) -> str:
    state = rollback["state"]
    line = f"rollback {rollback['id']} of {rollback['deployment_id']} {verb}: {state}"
    if state == "pending":
        line += f", executes in {left(rollback['execute_at'], now)} unless vetoed"
    elif state == "awaiting_approval":
        line += ", waits for `watchdogd ctl approve " + rollback["id"] + "`"
    elif state == "failed" and rollback.get("error"):
        line += f" ({rollback['error']})"
    return line


def event_line(event: dict[str, Any]) -> str:
    """One readable line per event."""
    kind, data = event["event"], event["data"]
    if not isinstance(data, dict):
        return f"{kind} {data}"
    at = data.get("at")
    stamp = rfc3339(at) if isinstance(at, int | float) else ""
    where = " ".join(
        f"{key}={data[key]}" for key in ("service", "deployment_id", "rollback_id", "actor") if data.get(key)
    )
    if kind == "rule_state":
        what = (
            f"{data.get('rule')} {data.get('from')} -> {data.get('to')} value={value_text(data.get('value'))}"
        )
        if data.get("reason"):
            what += f" ({data['reason']})"
    elif kind == "reset":
        what = "events were missed; run `watchdogd ctl status` for the current state"
        where = ""
    else:
        what = " ".join(f"{k}={v}" for k, v in data.items() if k in ("state",)) or ""
    return " ".join(part for part in (stamp, kind, what, where) if part)


def freeze_lines(freezes: list[dict[str, Any]], now: float) -> list[str]:
    """One line per freeze in force: no deployment of the service is taken until it ends or is lifted."""
    return [
        printable(
            f"FROZEN {f['service']}: no deployments for {left(f['until'], now)} (until {f['until']},"
            f" by {f['by']}): {f['reason']}"
        )
        for f in freezes
    ]


def size_text(size: Any) -> str:
    """Bytes for a person: ``12.3 MiB (12897484 bytes)``."""
    if not isinstance(size, int) or isinstance(size, bool):
        return value_text(size)
    if size < 1024:
        return f"{size} bytes"
    value, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]} ({size} bytes)"


def backup_lines(backup: dict[str, Any]) -> list[str]:
    """What a pipeline log should keep of a backup: its id, size, checksum and every table's rows."""
    lines = [
        f"backup {backup['backup_id']} of {backup['service']} (database {backup['database']}):"
        f" {size_text(backup['size'])} in {value_text(backup.get('seconds'))}s",
        f"  sha256 {backup['sha256']}",
        f"  taken {backup['created_at']} by {backup.get('by') or '-'},"
        f" PostgreSQL {backup.get('server_version') or '-'}",
    ]
    tables = backup.get("tables") or {}
    if not tables:
        return [*lines, "  no tables"]
    rows = [["TABLE", "ROWS AT BACKUP"], *([name, value_text(n)] for name, n in sorted(tables.items()))]
    return [*lines, *table(rows, indent="  ")]


def dump(data: Any, out: TextIO) -> None:
    """``--json``: the API's answer as it is, indented."""
    print(json_text(data, indent=2), file=out)


def json_text(data: Any, indent: int | None = None) -> str:
    # ASCII only: every control, C1 and format character in the API's strings leaves as a \u escape
    return json.dumps(data, indent=indent, ensure_ascii=True)
