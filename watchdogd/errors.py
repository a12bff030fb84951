"""The exceptions watchdogd raises.

One root, a few branches; the modules named define their own leaves::

    WatchdogError
    ├── ConfigError          a config file that cannot be used (carries every problem found)
    ├── SourceError          a source could not give a value (becomes "no data", never a crash)
    ├── RuleError            a rule was asked to do something impossible (time going backwards)
    ├── StoreError           the state store failed
    ├── RollbackError        a rollback step failed
    │   └── ScriptError      rollback SQL that cannot be read or must not run (rollback.sqlsplit)
    ├── SeriesError          a series notation or file that cannot be read (series, replay)
    ├── RequestError         an operator's or a pipeline's request refused (the API's 4xx)
    │   ├── NotFound         no such deployment or rollback (404)
    │   ├── Conflict         the current state refuses it (409); ``code`` says which refusal
    │   └── Invalid          it names something the config does not have (422)
    └── CtlError             ``watchdogd ctl`` ends with an exit code (ctl: Refused, Unreachable, Usage)
"""

from __future__ import annotations

from dataclasses import dataclass


class WatchdogError(Exception):
    """Root of every error watchdogd raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file, located as precisely as the file allows."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(WatchdogError):
    """A config that cannot be used; ``problems`` lists every problem, one line each."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(WatchdogError):
    """A source could not produce a value; ``kind`` says why in a word (a metric label)."""

    def __init__(self, message: str, kind: str = "bad_answer") -> None:
        super().__init__(message)
        self.kind = kind


class RuleError(WatchdogError):
    """A rule evaluation that cannot be done, such as a sample older than the last one."""


class StoreError(WatchdogError):
    """The state store failed."""


class RollbackError(WatchdogError):
    """A rollback step failed."""


class SeriesError(WatchdogError, ValueError):
    """A series (promtool notation, a recorded file) that cannot be read; the message says where."""


class RequestError(WatchdogError):
    """A request refused; the API answers with ``status`` and ``code``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(RequestError):
    status = 404
    code = "not_found"


class Conflict(RequestError):
    status = 409
    code = "conflict"


class Invalid(RequestError):
    status = 422
    code = "invalid"


class CtlError(WatchdogError):
    """Ends a ``watchdogd ctl`` command with ``exit_code`` after printing the message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
