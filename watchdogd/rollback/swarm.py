"""The container step for a Docker Swarm service: back to its previous spec, every task on it.

What ``docker service rollback`` does, through the Engine API: ``POST
/services/{id}/update?rollback=previous`` (the docker SDK's ``update_service``
has no parameter for it, so the request is made with the SDK's own session).
Swarm then replaces the tasks as the service's ``RollbackConfig`` says
(parallelism, order, monitor, failure action). When the service's
``PreviousSpec`` is no longer the one the deploy replaced (another update came
in between), the spec captured at deploy time is written back instead.

Every state a crash can leave is a starting point (``P`` is the previous
image, the one the deployment replaced)::

    spec runs P (rolled back: by us before a kill, or by Swarm itself) -> wait
    spec runs the deployed image, PreviousSpec runs P               -> rollback=previous, wait
    spec runs the deployed image, PreviousSpec does not             -> write the captured spec, wait
    spec runs a third image                                          -> refuse: a newer deploy
    Swarm is rolling back to something else than P                   -> refuse: never fight it

Waiting ends when Swarm's ``UpdateStatus`` is no longer in progress, every
task meant to run runs P, there are as many as the service's replicas, and
they are healthy: the service's health probe passes, or (without one) each
has been running ``settle`` seconds (a task with a Docker healthcheck is only
``running`` once healthy). A rollback Swarm pauses (the previous image fails
too) fails the step with Swarm's message: watchdogd does not redeploy the bad
image over Swarm's decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from docker import auth
from docker.errors import APIError, DockerException, NotFound
from requests.exceptions import RequestException

from watchdogd.config.models import ContainerStepConfig
from watchdogd.rollback.base import RollbackTarget, StepResult, StepStatus
from watchdogd.rollback.recreate import parse_time
from watchdogd.rollback.swarmspec import image_of, same_image, swarm_facts

log = structlog.get_logger("watchdogd.rollback.swarm")

Probe = Callable[[], Awaitable[bool]]
POLL_INTERVAL = 0.25
UPDATE_ATTEMPTS = 3
"""A spec version that moved between inspect and update (``update out of sequence``) is read again."""


class _Refused(Exception):
    pass


@dataclass
class _Run:
    service: str
    image: str
    """P: the spec image the deploy replaced."""
    deployed: str
    spec: Mapping[str, Any] | None
    """The service's spec as captured before the deploy, written back when PreviousSpec is not it."""
    actions: list[str] = field(default_factory=list)

    def data(self, **extra: Any) -> dict[str, Any]:
        return {"swarm_service": self.service, "image": self.image, "actions": list(self.actions), **extra}


class SwarmStep:
    """Rolls a Swarm service back to its previous spec; see the module docstring."""

    name = "container"

    def __init__(self, client: Any, probe: Probe | None = None, config: ContainerStepConfig | None = None):
        self.api = getattr(client, "api", client)
        self.probe = probe
        self.config = config

    def _prepare(self, target: RollbackTarget) -> _Run | StepResult:
        previous, current = target.previous, target.current
        service = target.config.swarm_service or target.service
        if previous is None or not previous.image_id:
            return StepResult("failed", f"no previous spec of Swarm service {service} known: nothing touched")
        if current is not None and same_image(current.image_id, previous.image_id):
            return StepResult("skipped", "the deploy kept the previous image: no service to roll back")
        spec = swarm_facts(previous).get("spec")
        return _Run(
            service,
            previous.image_id,
            current.image_id if current is not None else "",
            spec if isinstance(spec, Mapping) and spec else None,
        )

    async def run(self, target: RollbackTarget) -> StepResult:
        run = self._prepare(target)
        if isinstance(run, StepResult):
            return run
        settings = self.config or target.config.rollback.container
        bound = log.bind(service=target.service, deployment=target.deployment_id, swarm_service=run.service)
        try:
            result = await self._run(run, settings)
        except _Refused as exc:
            result = StepResult("failed", str(exc), run.data())
        except (DockerException, RequestException) as exc:
            result = StepResult("failed", f"Docker engine error: {type(exc).__name__}: {exc}", run.data())
        bound.info("swarm_step", status=result.status, detail=result.detail, actions=run.actions)
        return result

    async def _inspect(self, run: _Run) -> dict[str, Any]:
        try:
            return dict(await asyncio.to_thread(self.api.inspect_service, run.service))
        except NotFound:
            raise _Refused(f"no Swarm service named {run.service}: nothing touched") from None

    async def _run(self, run: _Run, settings: ContainerStepConfig) -> StepResult:
        for _ in range(UPDATE_ATTEMPTS):
            attrs = await self._inspect(run)
            if await self._start(run, attrs):
                break
        else:
            raise _Refused(f"{run.service} kept changing while watchdogd asked Swarm to roll it back")
        ok, why = await self._wait(run, settings)
        if not ok:
            return StepResult("failed", f"{run.service} did not come back on {run.image}: {why}", run.data())
        acted = any(a.startswith(("asked", "wrote")) for a in run.actions)
        status: StepStatus = "done" if acted else "already_done"
        return StepResult(status, f"every task of {run.service} runs {run.image}; {why}", run.data())

    async def _start(self, run: _Run, attrs: Mapping[str, Any]) -> bool:
        """Start the rollback unless it is under way or done; False when the spec moved under the call."""
        spec = attrs.get("Spec") or {}
        now = image_of(spec)
        status = attrs.get("UpdateStatus") or {}
        state, message = status.get("State"), status.get("Message") or ""
        if same_image(now, run.image):
            if state in ("rollback_started", "rollback_paused", "rollback_completed"):
                run.actions.append(f"found {run.service} rolling back to {run.image} ({state}: {message})")
            else:
                run.actions.append(f"found {run.service} on {run.image}")
            return True
        if state == "rollback_started":
            raise _Refused(
                f"Swarm is rolling {run.service} back to {now}, not {run.image} ({message}): "
                "not fought; nothing touched"
            )
        if run.deployed and not same_image(now, run.deployed):
            raise _Refused(
                f"{run.service} runs {now}, neither the deployed image {run.deployed} nor the previous one "
                f"{run.image}: a newer deploy? nothing touched"
            )
        version = (attrs.get("Version") or {}).get("Index")
        url = self.api._url("/services/{0}/update", attrs["ID"])
        try:
            if same_image(image_of(attrs.get("PreviousSpec")), run.image):
                response = await asyncio.to_thread(
                    self.api._post_json, url, data=spec, params={"version": version, "rollback": "previous"}
                )
                await asyncio.to_thread(self.api._result, response, True)
                run.actions.append(f"asked Swarm to roll {run.service} back to its previous spec ({state})")
                return True
            if run.spec is None:
                raise _Refused(
                    f"the previous spec of {run.service} is not {run.image} and none was captured: "
                    "nothing touched"
                )
            headers = {}
            registry, _ = auth.resolve_repository_name(run.image)
            header = auth.get_config_header(self.api, registry)
            if header:
                headers["X-Registry-Auth"] = header
            response = await asyncio.to_thread(
                self.api._post_json, url, data=dict(run.spec), params={"version": version}, headers=headers
            )
            await asyncio.to_thread(self.api._result, response, True)
            run.actions.append(f"wrote the spec captured before the deploy back to {run.service}")
            return True
        except APIError as exc:
            if "out of sequence" in str(exc.explanation or exc):
                return False
            raise _Refused(f"Swarm refused the rollback of {run.service}: {exc.explanation or exc}") from exc

    async def _wait(self, run: _Run, settings: ContainerStepConfig) -> tuple[bool, str]:
        """Until Swarm is done and every task runs P, healthy; False with why at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.healthy_timeout
        last = "no look yet"
        while True:
            ok, last, settled = await self._look(run, settings)
            if settled and ok:
                return True, last
            if settled:
                return False, last
            if loop.time() >= deadline:
                return False, f"not done within {settings.healthy_timeout:g}s ({last})"
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))

    async def _look(self, run: _Run, settings: ContainerStepConfig) -> tuple[bool, str, bool]:
        """(healthy, what was seen, final): final is True when waiting longer cannot change the answer."""
        attrs = await self._inspect(run)
        now = image_of(attrs.get("Spec"))
        status = attrs.get("UpdateStatus") or {}
        state, message = status.get("State"), status.get("Message") or ""
        if not same_image(now, run.image):
            return False, f"its spec changed to {now} while it rolled back", True
        if state in ("paused", "rollback_paused"):
            return False, f"Swarm paused it ({state}): {message}", True
        if state in ("updating", "rollback_started"):
            return False, f"Swarm is still at it ({state})", False
        tasks = await asyncio.to_thread(
            self.api.tasks, filters={"service": attrs["ID"], "desired-state": "running"}
        )
        replicas = ((attrs.get("Spec") or {}).get("Mode") or {}).get("Replicated", {}).get("Replicas")
        wrong = [t for t in tasks if not same_image(image_of({"TaskTemplate": t.get("Spec")}), run.image)]
        if wrong:
            return False, f"{len(wrong)} task(s) still on another image", False
        down = [t for t in tasks if (t.get("Status") or {}).get("State") != "running"]
        if down:
            first = down[0].get("Status") or {}
            why = f"{first.get('State')}: {first.get('Err') or ''}"
            return False, f"{len(down)} task(s) not running ({why})", False
        if replicas is not None and len(tasks) < replicas:
            return False, f"{len(tasks)} of {replicas} tasks running", False
        if self.probe is not None:
            try:
                if await self.probe():
                    return True, f"{len(tasks)} task(s) running, health probe passed", True
                return False, "health probe failed", False
            except Exception as exc:  # the probe's failure is a "not yet"
                return False, f"health probe raised {type(exc).__name__}", False
        up = min(
            (
                (datetime.now(UTC) - parse_time((t.get("Status") or {}).get("Timestamp", ""))).total_seconds()
                for t in tasks
            ),
            default=0.0,
        )
        if up >= settings.settle:
            return True, f"{len(tasks)} task(s) running for {settings.settle:g}s", True
        return False, f"{len(tasks)} task(s) running for {up:.1f}s of {settings.settle:g}s", False

    async def describe(self, target: RollbackTarget) -> list[str]:
        """What ``run`` would do from the service as it is now; reads only."""
        run = self._prepare(target)
        if isinstance(run, StepResult):
            return [f"{run.status}: {run.detail}"]
        s = self.config or target.config.rollback.container
        wait = (
            f"wait up to {s.healthy_timeout:g}s until every task of {run.service} runs {run.image} and is "
            + ("healthy by the service's health probe" if self.probe else f"running for {s.settle:g}s")
        )
        try:
            attrs = await self._inspect(run)
        except (_Refused, DockerException, RequestException) as exc:
            return [f"(Swarm service unreadable: {exc}; assuming it runs the deploy)", wait]
        now = image_of(attrs.get("Spec"))
        if same_image(now, run.image):
            return [f"{run.service} already runs {run.image}: {wait}; nothing else"]
        if same_image(image_of(attrs.get("PreviousSpec")), run.image):
            return [f"ask Swarm to roll {run.service} back to its previous spec ({run.image})", wait]
        return [f"write the spec captured before the deploy ({run.image}) back to {run.service}", wait]
