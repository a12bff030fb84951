"""The data watchdogd's parts pass to each other: frozen, no I/O.

Times are float seconds. The rule engine does not care which clock they come
from (epoch or monotonic), only that they never go backwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RuleState(StrEnum):
    """Where a rule stands; the numbers are ``watchdogd_rule_state``'s values."""

    OK = "ok"
    """The condition does not hold on the latest data."""
    PENDING = "pending"
    """The condition holds, but not yet for long enough (or not often enough)."""
    FIRING = "firing"
    """The rule has decided: the deploy is bad (or, for notify rules, worth a message)."""
    NO_DATA = "no_data"
    """No verdict: nothing evaluated yet, the source gave no data, or there is no baseline."""

    @property
    def metric_value(self) -> int:
        return _METRIC_VALUES[self]


_METRIC_VALUES = {RuleState.OK: 0, RuleState.PENDING: 1, RuleState.FIRING: 2, RuleState.NO_DATA: 3}


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a source at ``time``; ``value`` None means no data, ``reason`` says why."""

    time: float
    value: float | None
    reason: str | None = None
    error: str | None = None
    """Why the source's answer counts as an error, in a word (``bad_data``, ``empty``): the
    ``reason`` label of ``watchdogd_source_errors_total``. None: a plain missing value."""
    counts: tuple[float, float] | None = None
    """(errors, requests) counted since the previous poll, for a sequential rule; None otherwise."""
    buckets: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """A histogram's requests counted since the previous poll, for a latency rule: (finite upper
    bounds, counts per bucket, the last above the highest bound); None otherwise."""

    @classmethod
    def missing(cls, time: float, reason: str, error: str | None = None) -> Sample:
        return cls(time, None, reason, error)

    @property
    def has_value(self) -> bool:
        """A usable number: not missing and not NaN (NaN is treated as no data)."""
        return self.value is not None and not math.isnan(self.value)


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule changed state: when, from what to what, on which value(s), against what.

    ``value`` is the value at this evaluation (None without data); ``values``
    holds every value the decision rests on (the failing values counted by a
    ``failures`` rule, otherwise just ``value``); ``threshold`` is the number
    compared with (the effective one for a baseline rule, the clear threshold
    when a clear condition ended the firing); ``reason`` says it in words.
    """

    rule: str
    at: float
    from_state: RuleState
    to_state: RuleState
    value: float | None
    threshold: float | None
    reason: str
    values: tuple[float | None, ...] = ()

    @property
    def fired(self) -> bool:
        """This transition entered firing."""
        return self.to_state is RuleState.FIRING and self.from_state is not RuleState.FIRING


class DeploymentState(StrEnum):
    """Where a watched deployment stands (CONTRACT.md, "Deployments")."""

    WATCHING = "watching"
    """Inside its window: rules are evaluated, rollbacks may be proposed."""
    PROMOTED = "promoted"
    """The window ended (or an operator ended it) with every rollback rule verified."""
    UNVERIFIED = "unverified"
    """The window ended while a rollback rule had no data: never promoted silently."""
    SUPERSEDED = "superseded"
    """A newer deployment of the service was registered; this one's proposals were cancelled."""
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"

    @property
    def open(self) -> bool:
        return self in (DeploymentState.WATCHING, DeploymentState.ROLLING_BACK)


class RollbackState(StrEnum):
    """Where a rollback stands: a proposal first, then a plan that runs."""

    PENDING = "pending"
    """Inside its veto window: operators may veto, approve or acknowledge it."""
    AWAITING_APPROVAL = "awaiting_approval"
    """Manual mode: nothing runs until an operator approves (or the approval timeout decides)."""
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """A step failed; an operator may retry it from its journal."""
    VETOED = "vetoed"
    DRY_RUN = "dry_run"
    """Dry-run mode: recorded what it would have run, touched nothing."""
    CANCELLED = "cancelled"
    """Ended by watchdogd: its deployment was superseded or its service removed from the config."""

    @property
    def proposed(self) -> bool:
        """Still a proposal: vetoable, approvable, joined by other firing rules."""
        return self in (RollbackState.PENDING, RollbackState.AWAITING_APPROVAL)

    @property
    def final(self) -> bool:
        """Nothing more happens to it unless an operator retries it (``failed`` only)."""
        return self in FINAL_ROLLBACK_STATES


FINAL_ROLLBACK_STATES = frozenset(
    {
        RollbackState.SUCCEEDED,
        RollbackState.FAILED,
        RollbackState.VETOED,
        RollbackState.DRY_RUN,
        RollbackState.CANCELLED,
    }
)
PROPOSED_STATES = (RollbackState.PENDING, RollbackState.AWAITING_APPROVAL)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Migration:
    """A migration registered with a deployment: how to undo and check it."""

    id: str
    down_sql: str
    verify: tuple[str, ...] = ()
    """Queries that must each return true after the down SQL."""
    source: str = "api"
    """``file``: read from the service's migrations directory; ``api``: sent in the request."""
    files: tuple[tuple[str, str], ...] = ()
    """For ``file``: each file read at registration and its SHA-256 then (down script first)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "down_sql": self.down_sql, "verify_sql": list(self.verify)}
        out["source"] = self.source
        if self.files:
            out["files"] = [{"path": path, "sha256": sha} for path, sha in self.files]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Migration:
        verify = raw.get("verify_sql", raw.get("verify", ()))
        files = tuple((str(f["path"]), str(f["sha256"])) for f in raw.get("files") or ())
        return cls(
            str(raw["id"]),
            str(raw["down_sql"]),
            tuple(str(q) for q in verify),
            str(raw.get("source") or "api"),
            files,
        )


@dataclass(frozen=True, slots=True)
class ContainerSnapshot:
    """A container's configuration captured at deploy time, enough to recreate it."""

    name: str
    image: str
    """The image reference it ran (a tag or an id)."""
    image_id: str
    """The image's ID as the engine ran it; empty when only a name is known (never seen running)."""
    config: dict[str, Any]
    """Everything else needed to recreate it (command, env, mounts, ...), JSON-ready."""
    digests: tuple[str, ...] = ()
    """The image's ``RepoDigests`` when it ran (``repo@sha256:...``): what a pull fetches it back by."""
    replicas: tuple[ContainerSnapshot, ...] = ()
    """A Compose service's other containers (this one is its first replica); none for one container."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "image_id": self.image_id,
            "config": self.config,
        }
        if self.digests:
            out["digests"] = list(self.digests)
        if self.replicas:
            out["replicas"] = [r.to_json() for r in self.replicas]
        return out

    @property
    def containers(self) -> tuple[ContainerSnapshot, ...]:
        """Every container of the target: this one, then its replicas."""
        return (self, *self.replicas)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> ContainerSnapshot | None:
        if not raw:
            return None
        return cls(
            str(raw["name"]),
            str(raw["image"]),
            str(raw.get("image_id") or ""),
            dict(raw["config"]),
            tuple(str(d) for d in raw.get("digests") or ()),
            tuple(r for r in (ContainerSnapshot.from_json(x) for x in raw.get("replicas") or ()) if r),
        )


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """What a rollback of a deployment needs: the containers before and after, the migrations."""

    origin: str = "api"
    """How it became known: ``api``, ``docker`` (noticed from events) or ``docker+api``."""
    previous: ContainerSnapshot | None = None
    current: ContainerSnapshot | None = None
    migrations: tuple[Migration, ...] = ()
    sql_policy: str | None = None
    """What the down SQL's assessment allows: ``run``, ``approve`` (an operator must) or ``refuse``."""
    backup_id: str | None = None
    """The backup the pipeline took before it migrated: what a ``restore`` step restores."""
    known_bad: dict[str, Any] | None = None
    """Set when the deployed image was rolled back recently: ``image``, ``image_id``, ``rolled_back_at``,
    ``rolled_back_deployment`` (the deployment rolled back from it) and ``reason``."""

    def to_json(self) -> dict[str, Any]:
        return {
            **({"known_bad": self.known_bad} if self.known_bad else {}),
            "backup_id": self.backup_id,
            "origin": self.origin,
            "previous": self.previous.to_json() if self.previous else None,
            "current": self.current.to_json() if self.current else None,
            "migrations": [m.to_json() for m in self.migrations],
            "sql_policy": self.sql_policy,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeploymentFacts:
        return cls(
            origin=str(raw.get("origin") or "api"),
            previous=ContainerSnapshot.from_json(raw.get("previous")),
            current=ContainerSnapshot.from_json(raw.get("current")),
            migrations=tuple(Migration.from_json(m) for m in raw.get("migrations") or ()),
            sql_policy=raw.get("sql_policy"),
            backup_id=raw.get("backup_id"),
            known_bad=dict(raw["known_bad"]) if raw.get("known_bad") else None,
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    service: str
    image: str | None
    previous_image: str | None
    state: DeploymentState
    started_at: float
    window_ends_at: float
    finished_at: float | None
    facts: DeploymentFacts

    @property
    def open(self) -> bool:
        return DeploymentState(self.state).open


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rollback was proposed: a rule that fired, or an operator's words."""

    at: float
    text: str
    """The rule's reason in words (``0.2 > 0.05 for 5m``) or the operator's."""
    rule: str | None = None
    operator: str | None = None
    value: float | None = None
    values: tuple[float | None, ...] = ()
    threshold: float | None = None
    severity: str | None = None
    output: str | None = None
    """The last output of an exec source (a smoke test's failures)."""
    service: str | None = None
    """In a group's proposal, the member whose rule fired or whose deployment the operator named."""

    @property
    def label(self) -> str:
        who = f"{self.service}/" if self.service is not None else ""
        return f"{who}{self.rule or self.operator or 'operator'}: {self.text}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "reason": self.text}
        if self.rule is not None:
            out.update(
                rule=self.rule,
                value=jsonable_number(self.value),
                values=[jsonable_number(v) for v in self.values],
                threshold=jsonable_number(self.threshold),
            )
            if self.severity is not None:
                out["severity"] = self.severity
        if self.operator is not None:
            out["operator"] = self.operator
        if self.output is not None:
            out["output"] = self.output
        if self.service is not None:
            out["service"] = self.service
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Reason:
        def num(value: Any) -> float | None:
            return None if value is None else float(value)

        return cls(
            at=float(raw.get("at") or 0.0),
            text=str(raw.get("reason", "")),
            rule=raw.get("rule"),
            operator=raw.get("operator"),
            value=num(raw.get("value")),
            values=tuple(num(v) for v in raw.get("values") or ()),
            threshold=num(raw.get("threshold")),
            severity=raw.get("severity"),
            output=raw.get("output"),
            service=raw.get("service"),
        )


def why(reasons: Sequence[Reason]) -> str:
    """Reasons in one line, for summaries and the rollback target."""
    return "; ".join(r.label for r in reasons)


@dataclass(frozen=True, slots=True)
class StepRecord:
    position: int
    name: str
    state: StepState
    attempts: int
    started_at: float | None
    finished_at: float | None
    error: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    id: str
    deployment_id: str
    service: str
    state: RollbackState
    reasons: tuple[Reason, ...]
    target: dict[str, Any]
    """The plan's target as JSON (``watchdogd.rollback.plan.target_to_json``), fixed when it executes."""
    proposed_at: float
    execute_at: float | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    steps: tuple[StepRecord, ...]

    @property
    def final(self) -> bool:
        return RollbackState(self.state).final

    @property
    def proposed(self) -> bool:
        return RollbackState(self.state).proposed

    @property
    def dry_run(self) -> bool:
        return bool(self.target.get("dry_run"))

    @property
    def rules(self) -> frozenset[str]:
        """The rules whose firing this rollback answers."""
        return frozenset(r.rule for r in self.reasons if r.rule is not None)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    actor: str
    action: str
    deployment_id: str | None
    rollback_id: str | None
    detail: dict[str, Any]


def jsonable_number(value: float | None) -> float | str | None:
    """JSON has no NaN or infinity: those travel as strings."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)
