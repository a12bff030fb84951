"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /v1/openapi.json``.

Request bodies come from the API's own body models; answers are described by
the models below, which mirror what the handlers send. ``OPERATIONS`` holds one
entry per route; a route served but not described here (or the reverse) is a
bug that the unit tests catch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from watchdogd import __version__
from watchdogd.model import DeploymentState, RollbackState, RuleState, StepState

Role = Literal["viewer", "deployer", "operator", "admin"]
REF = "#/components/schemas/{model}"
ALWAYS_OPEN = "v1/openapi.json"  # api.OPENAPI_PATH (not imported: api imports this module on demand)
"""This document needs no token, whatever the config opens."""
UI_OPEN = ("ui", "ui/{file}")
"""The operator page's files need no token either: they hold no data."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Freeze(_Out):
    service: str
    reason: str
    since: str
    until: str
    by: str
    rollback_id: str | None = None


class Freezes(_Out):
    """The freezes in force, soonest to end first."""

    items: list[Freeze]


class Backup(_Out):
    """A pg_dump -Fc of the service's database, with every table's rows at that moment."""

    backup_id: str
    service: str
    database: str
    created_at: str
    size: int
    sha256: str
    tables: dict[str, int]
    server_version: str
    by: str
    seconds: float


class Backups(_Out):
    """The service's backups, newest first."""

    items: list[Backup]


class Unfrozen(_Out):
    lifted: Freeze


class ErrorDetail(_Out):
    code: str
    message: str
    freeze: Freeze | None = None
    """With code ``frozen`` (409 to POST /v1/deployments): the freeze, its reason and its end."""


class Error(_Out):
    """Every refusal: 400, 401, 403, 404, 409, 413, 422 (and 503 while starting)."""

    error: ErrorDetail


class Status(_Out):
    status: Literal["ok"]


class Ready(_Out):
    status: Literal["ok"]
    leader: bool = True
    """With replicas on a PostgreSQL state, whether this one evaluates, decides and executes.

    Absent with SQLite: the only process always leads."""


class NotReady(_Out):
    status: Literal["not_ready"]
    reason: str


class RuleView(_Out):
    name: str
    state: RuleState
    value: float | str | None
    """A number; non-finite values are sent as strings (``"inf"``, ``"nan"``)."""
    since: str | None
    reason: str | None


class Principal(_Out):
    name: str
    role: Role


class KnownBad(_Out):
    """The deployed image was rolled back recently (``known_bad_for``)."""

    image: str
    image_id: str
    rolled_back_at: float
    rolled_back_deployment: str
    reason: str


class Deployment(_Out):
    id: str
    service: str
    image: str | None
    previous_image: str | None
    state: DeploymentState
    started_at: str
    window_ends_at: str
    finished_at: str | None
    migrations: list[str]
    backup_id: str | None = None
    known_bad: KnownBad | None = None
    rules: list[RuleView]


class Rehearsal(_Out):
    status: str
    detail: Any


class DeploymentCreated(Deployment):
    """A new (or completed) deployment, with what the down SQL would destroy when it has some."""

    sql_policy: str | None = None
    destroys: list[str] | None = None
    rehearsal: Rehearsal | None = None


class Step(_Out):
    name: str
    state: StepState
    started_at: str | None
    finished_at: str | None
    error: str | None
    detail: str | None
    attempts: int


class Rollback(_Out):
    id: str
    deployment_id: str
    service: str
    state: RollbackState
    reasons: list[dict[str, Any]]
    proposed_at: str
    execute_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    steps: list[Step]
    group: RollbackGroup | None = None
    """Only for a service group's rollback."""


class GroupMember(_Out):
    service: str
    deployment_id: str | None
    state: Literal["back", "not_back", "rolling_back", "pending", "skipped"]
    why: str | None


class RollbackGroup(_Out):
    """The group's members in the order their plans run, and which are back."""

    name: str
    members: list[GroupMember]


class AuditEntry(_Out):
    seq: int
    at: str
    actor: str
    action: str
    deployment_id: str | None
    rollback_id: str | None
    detail: dict[str, Any]


class AlertsTaken(_Out):
    """An Alertmanager notification taken in: its alert count and the sources that kept it."""

    status: Literal["ok"]
    alerts: int
    sources: int


class Deployments(_Out):
    items: list[Deployment]


class Rollbacks(_Out):
    items: list[Rollback]


class AuditEntries(_Out):
    """Newest first; ``next`` is the ``before`` of the following page, null on the last one."""

    items: list[AuditEntry]
    next: int | None = None


ERRORS = {
    400: "Not JSON, or a malformed query",
    401: "No token, or an unknown one",
    403: "The token's role is too low",
    404: "No such deployment or rollback",
    409: "The current state refuses it",
    413: "The body is larger than the route takes",
    422: "A body that breaks the schema, or names what the config does not have",
    429: "Too many at once: failed tokens waiting, or event streams over a cap (Retry-After)",
    503: "The daemon is still starting, or the state store is not answering (Retry-After)",
}


@dataclass(frozen=True)
class Operation:
    """One route as the document shows it."""

    summary: str
    role: Role | None
    ok: int = 200
    answer: type[BaseModel] | None = None
    body: str | None = None
    """The name of a body model in ``watchdogd.api``; bodies are optional when ``body_optional``."""
    body_optional: bool = False
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, str | None], ...] = ()
    """Query parameters: name, description, JSON schema format."""
    media_type: str = "application/json"


_VIEW = (401, 503)
_VOTE = (400, 401, 403, 404, 409, 422, 503)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation("Liveness", None, answer=Status),
    ("GET", "/readyz"): Operation(
        "Readiness, and whether this replica leads: 503 with the reason until the daemon runs",
        None,
        answer=Ready,
    ),
    ("GET", "/metrics"): Operation("Prometheus metrics", None, media_type="text/plain"),
    ("GET", "/v1/openapi.json"): Operation("This document", None),
    ("POST", "/v1/deployments"): Operation(
        "Register a deployment",
        "deployer",
        ok=201,
        answer=DeploymentCreated,
        body="DeploymentBody",
        errors=(400, 401, 403, 409, 422, 503),
    ),
    ("GET", "/v1/freezes"): Operation("Deploy freezes in force", "viewer", answer=Freezes, errors=_VIEW),
    ("POST", "/v1/services/{service}/freeze"): Operation(
        "Freeze a service: POST /v1/deployments for it answers 409 frozen until then",
        "operator",
        ok=201,
        answer=Freeze,
        body="FreezeBody",
        errors=_VOTE,
    ),
    ("DELETE", "/v1/services/{service}/freeze"): Operation(
        "Lift a service's freeze",
        "operator",
        answer=Unfrozen,
        body="EmptyBody",
        body_optional=True,
        errors=_VOTE,
    ),
    ("POST", "/v1/services/{service}/backups"): Operation(
        "Back up the service's database (pg_dump -Fc) before migrating; older backups are pruned",
        "deployer",
        ok=201,
        answer=Backup,
        body="EmptyBody",
        body_optional=True,
        errors=(400, 401, 403, 409, 422, 503),
    ),
    ("GET", "/v1/services/{service}/backups"): Operation(
        "The service's backups, newest first", "viewer", answer=Backups, errors=(*_VIEW, 422)
    ),
    ("GET", "/v1/deployments"): Operation(
        "Deployments, newest first", "viewer", answer=Deployments, errors=_VIEW
    ),
    ("GET", "/v1/deployments/{id}"): Operation(
        "One deployment with each rule's state", "viewer", answer=Deployment, errors=(*_VIEW, 404)
    ),
    ("POST", "/v1/deployments/{id}/promote"): Operation(
        "End the window as healthy",
        "operator",
        answer=Deployment,
        body="EmptyBody",
        body_optional=True,
        errors=_VOTE,
    ),
    ("POST", "/v1/deployments/{id}/rollback"): Operation(
        "Propose a rollback by hand", "operator", ok=202, answer=Rollback, body="ReasonBody", errors=_VOTE
    ),
    ("GET", "/v1/rollbacks"): Operation("Rollbacks, newest first", "viewer", answer=Rollbacks, errors=_VIEW),
    ("GET", "/v1/rollbacks/{id}"): Operation(
        "One rollback with its steps", "viewer", answer=Rollback, errors=(*_VIEW, 404)
    ),
    ("POST", "/v1/rollbacks/{id}/ack"): Operation(
        "Acknowledge a proposal; it still proceeds",
        "operator",
        answer=Rollback,
        body="EmptyBody",
        body_optional=True,
        errors=(400, 401, 403, 404, 422, 503),
    ),
    ("POST", "/v1/rollbacks/{id}/veto"): Operation(
        "Cancel a proposal during its grace; 409 once executing",
        "operator",
        answer=Rollback,
        body="VetoBody",
        errors=_VOTE,
    ),
    ("POST", "/v1/rollbacks/{id}/approve"): Operation(
        "Execute a proposal now",
        "operator",
        answer=Rollback,
        body="EmptyBody",
        body_optional=True,
        errors=_VOTE,
    ),
    ("POST", "/v1/rollbacks/{id}/retry"): Operation(
        "Run a failed rollback again from its journal; finished steps are not repeated",
        "operator",
        answer=Rollback,
        body="EmptyBody",
        body_optional=True,
        errors=_VOTE,
    ),
    ("POST", "/v1/deployments/{id}/rehearse"): Operation(
        "Rehearse the down SQL in a rolled-back transaction",
        "operator",
        answer=None,
        body="EmptyBody",
        body_optional=True,
        errors=_VOTE,
    ),
    ("POST", "/v1/alertmanager"): Operation(
        "Alertmanager webhook (version 4): alerts for the alertmanager sources",
        "deployer",
        answer=AlertsTaken,
        body="WebhookPayload",
        errors=(400, 401, 403, 413, 422, 503),
    ),
    ("GET", "/v1/events"): Operation(
        "Server-sent events: rule state changes, proposals, steps, outcomes",
        "viewer",
        errors=(400, *_VIEW),
        query=(("last_event_id", "Resume after this event (or send Last-Event-ID)", None),),
        media_type="text/event-stream",
    ),
    ("GET", "/v1/whoami"): Operation("The token's name and role", "viewer", answer=Principal, errors=_VIEW),
    ("GET", "/ui"): Operation(
        "The operator page (HTML; the token is typed into the page)", None, media_type="text/html"
    ),
    ("GET", "/ui/{file}"): Operation(
        "The operator page's script (app.js), style sheet (app.css) and icon (favicon.svg)",
        None,
        errors=(404,),
        media_type="text/plain",
    ),
    ("GET", "/v1/audit"): Operation(
        "Who did what when",
        "viewer",
        answer=AuditEntries,
        errors=(400, *_VIEW),
        query=(
            ("deployment", "Only this deployment's entries", None),
            ("actor", "Only this actor's entries", None),
            ("since", "Only entries from this RFC 3339 time on", "date-time"),
            ("before", "Only entries older than this seq: the next of the previous page", None),
            ("limit", "At most this many entries, 1 to 500 (default 500)", None),
        ),
    ),
}


def document(bodies: dict[str, type[BaseModel]], open_endpoints: Iterable[str]) -> dict[str, Any]:
    """The document; ``bodies`` maps body model names to the models, ``open_endpoints`` as in the config."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    error = ref(Error, "serialization")
    opened = {*open_endpoints, ALWAYS_OPEN, *UI_OPEN}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": _operation_id(method, path),
            "x-role": op.role,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in _path_names(path)
        ]
        for name, description, fmt in op.query:
            schema = {"type": "string", **({"format": fmt} if fmt else {})}
            parameters.append(
                {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
            )
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": not op.body_optional,
                "content": {"application/json": {"schema": ref(bodies[op.body], "validation")}},
            }
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK"}
        if op.media_type != "application/json":
            ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
        elif op.answer is not None:
            ok["content"] = {"application/json": {"schema": ref(op.answer, "serialization")}}
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses[str(op.ok)] = ok
        if path == "/readyz":
            responses["503"] = {
                "description": "Not ready, with the reason",
                "content": {"application/json": {"schema": ref(NotReady, "serialization")}},
            }
        needs_token = op.role is not None or path.strip("/") not in opened
        codes = set(op.errors)
        if op.role is None and needs_token:
            codes |= {401, 403}  # an open endpoint the config closed needs an admin's token
        codes.add(400)  # any route: a header that is not UTF-8
        if needs_token:
            codes |= {429, 503}  # guessers held back; a store that does not answer
        for code in sorted(codes):
            responses[str(code)] = {
                "description": ERRORS[code],
                "content": {"application/json": {"schema": error}},
            }
        entry["responses"] = responses
        entry["security"] = [{"bearer": []}] if needs_token else []
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "watchdogd",
            "version": __version__,
            "description": "Guards fresh deploys and rolls them back; the operators' API.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _operation_id(method: str, path: str) -> str:
    words = [p.strip("{}").replace(".", "_") for p in path.strip("/").split("/") if p and p != "v1"]
    return "_".join([method.lower(), *words])
