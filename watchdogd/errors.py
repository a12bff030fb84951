"""The exceptions watchdogd raises.

One root, a few branches::

    WatchdogError
    ├── ConfigError          a config file that cannot be used (carries every problem found)
    ├── SourceError          a source could not give a value (becomes "no data", never a crash)
    ├── RuleError            a rule was asked to do something impossible (time going backwards)
    ├── StoreError           the state store failed
    └── RollbackError        a rollback step failed
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
    """A source could not produce a value."""


class RuleError(WatchdogError):
    """A rule evaluation that cannot be done, such as a sample older than the last one."""


class StoreError(WatchdogError):
    """The state store failed."""


class RollbackError(WatchdogError):
    """A rollback step failed."""
