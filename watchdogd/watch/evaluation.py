"""Evaluation: a polled sample -> the rule engine -> the state saved -> its transitions acted on.

Only the leader evaluates and saves states; a follower keeps the value gauge
and reads the leader's states. A rule that keeps firing is offered to the
proposer at every evaluation, not only when it enters firing: a rule whose
mute ended while it still fires proposes again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from watchdogd.config.types import format_duration
from watchdogd.errors import RuleError
from watchdogd.model import Deployment, RuleState, Sample, Transition, jsonable_number
from watchdogd.rules import (
    EvalState,
    baseline_mean,
    dump_state,
    evaluate,
    resume,
    start,
    start_latency,
    start_sequential,
)
from watchdogd.sources import Measure
from watchdogd.store import Store
from watchdogd.telemetry import Metrics
from watchdogd.watch.live import Watched
from watchdogd.watch.proposals import Proposer
from watchdogd.watch.report import Reporter
from watchdogd.watch.statesave import StateSaver
from watchdogd.watch.tasks import Health
from watchdogd.watch.world import RuleRun

log = structlog.get_logger("watchdogd")

History = Callable[[str, Measure, float], list[Sample]]
"""A source's kept samples of one measure since a time: what baselines are computed from."""
Clip = Callable[[RuleRun, Sample, float], Sample]
"""A sample again from the data after a time only (a scrape window clipped at the deploy)."""


class Evaluator:
    def __init__(
        self,
        *,
        store: Store,
        report: Reporter,
        health: Health,
        watched: Watched,
        proposer: Proposer,
        metrics: Metrics,
        history: History,
        leading: Callable[[], bool],
        clip: Clip = lambda _, sample, __: sample,
    ) -> None:
        self.store = store
        self.report = report
        self.health = health
        self.watched = watched
        self.proposer = proposer
        self.metrics = metrics
        self.history = history
        self.leading = leading
        self.clip = clip
        self.states = StateSaver(store, health)
        """Rule states, saved in rounds."""
        self._children: dict[tuple[Any, ...], Any] = {}
        self._before_deploy: set[tuple[str, str]] = set()
        self._blind: set[tuple[str, str]] = set()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, found once: thousands of evaluations a second ask for the same."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def callback(self, run: RuleRun) -> Callable[[str, Mapping[Measure, Sample]], Awaitable[None]]:
        async def on_poll(_: str, samples: Mapping[Measure, Sample]) -> None:
            await self.evaluate(run, samples[run.measure])

        return on_poll

    async def evaluate(self, run: RuleRun, sample: Sample) -> None:
        labels = (run.service, run.rule.name)
        if sample.value is not None:
            self._child(self.metrics.rule_value, *labels).set(sample.value)
        if not self.leading():
            return  # the leader evaluates and saves the states; a follower reads them
        live = self.watched.get(run.service)
        if live is None or not live.deployment.open:
            return
        if sample.time < live.deployment.started_at:
            key = (live.deployment.id, run.rule.name)
            if key not in self._before_deploy:  # said once per rule and deployment
                self._before_deploy.add(key)
                log.info(
                    "sample_before_deploy",
                    service=run.service,
                    rule=run.rule.name,
                    deployment=live.deployment.id,
                    sample_at=round(sample.time, 3),
                    deploy_at=round(live.deployment.started_at, 3),
                    kept="not evaluated: it says nothing about the new version",
                )
            return
        deployment = live.deployment
        if sample.time < deployment.started_at + self._initial_delay(run):
            return  # a query over a window still reads mostly the old version
        sample = self.clip(run, sample, deployment.started_at)
        # No await between reading and replacing the state: evaluations of other rules
        # interleave freely, and one rule's polls never overlap (one job per source).
        state = live.states.get(run.rule.name) or self._start(run, live.deployment)
        if live.resumed and run.rule.name in live.resumed:
            live.resumed.discard(run.rule.name)
            if state.last_eval is not None and sample.time < state.last_eval:
                # a poll planned before the saved state was carried over to the time it was
                # read (a restart, a takeover): carried to this poll's time instead, and this
                # poll evaluated as the first since the gap
                state = resume(state, sample.time)._replace(last_eval=None)
        try:
            state, transitions = evaluate(run.rule, state, sample, sample.time)
        except RuleError as exc:
            log.warning("rule_error", service=run.service, rule=run.rule.name, error=str(exc))
            return
        live.states[run.rule.name] = state
        tally = live.count(run.rule.name, sample.value is not None)
        saved = {**dump_state(state), "fingerprint": run.fingerprint, "tally": list(tally)}
        self.states.put(live.deployment.id, run.rule.name, saved)
        if transitions:
            await self.states.flush()  # the state that changed is stored before anything acts on it
        self._child(self.metrics.rule_state, *labels).set(state.state.metric_value)
        if state.threshold is not None:
            self._child(self.metrics.rule_threshold, *labels).set(state.threshold)
        self._child(self.metrics.rule_evaluations, *labels, state.state.value).inc()
        for transition in transitions:
            await self._transition(run, deployment, transition)
        if state.state is RuleState.FIRING:
            entered = next((t for t in transitions if t.fired), None)
            await self.proposer.on_firing(run, deployment, state, entered)
        if run.rule.action == "rollback":
            await self._watch_blindness(run, deployment, state, sample.time)

    async def _watch_blindness(
        self, run: RuleRun, deployment: Deployment, state: EvalState, now: float
    ) -> None:
        """A rollback rule without data for ``blind_after`` is said loudly, once; and when it sees again."""
        key = (deployment.id, run.rule.name)
        labels = (run.service, run.rule.name)
        blind = state.state is RuleState.NO_DATA and now - state.since >= run.blind_after
        ids = {"service": run.service, "deployment_id": deployment.id}
        if blind and key not in self._blind:
            self._blind.add(key)
            self._child(self.metrics.rule_blind, *labels).set(1)
            detail = {"rule": run.rule.name, "since": state.since, "reason": state.reason}
            summary = (
                f"rollback rule {run.rule.name} of {run.service} has had no data for"
                f" {format_duration(now - state.since)}: it cannot see a bad deploy ({state.reason})"
            )
            await self.report("rule_blind", **ids, detail=detail, summary=summary)
        elif not blind and key in self._blind and state.state is not RuleState.NO_DATA:
            self._blind.discard(key)
            self._child(self.metrics.rule_blind, *labels).set(0)
            await self.report("rule_sees", **ids, detail={"rule": run.rule.name, "state": state.state.value})
        elif key not in self._blind:
            self._child(self.metrics.rule_blind, *labels).set(0)  # a series from the first evaluation on

    def _initial_delay(self, run: RuleRun) -> float:
        own = run.config.initial_delay
        return own if own is not None else run.service_initial_delay

    def _start(self, run: RuleRun, deployment: Deployment) -> EvalState:
        sequential = run.rule.sequential
        if sequential is not None:
            since = deployment.started_at - sequential.history
            history = self.history(run.config.source, run.measure, since)
            return start_sequential(run.rule, deployment.started_at, history)
        latency = run.rule.latency
        if latency is not None:
            since = deployment.started_at - latency.history
            history = self.history(run.config.source, run.measure, since)
            return start_latency(run.rule, deployment.started_at, history)
        baseline = None
        if run.rule.baseline_before is not None:
            since = deployment.started_at - run.rule.baseline_before
            samples = self.history(run.config.source, run.measure, since)
            baseline = baseline_mean(samples, deployment.started_at, run.rule.baseline_before)
        return start(run.rule, deployment.started_at, baseline)

    async def _transition(self, run: RuleRun, deployment: Deployment, t: Transition) -> None:
        detail = {
            "rule": run.rule.name,
            "from": t.from_state.value,
            "to": t.to_state.value,
            "value": jsonable_number(t.value),
            "values": [jsonable_number(v) for v in t.values],
            "threshold": jsonable_number(t.threshold),
            "reason": t.reason,
            "at": t.at,
        }
        await self.report("rule_state", service=run.service, deployment_id=deployment.id, detail=detail)
        if t.from_state is RuleState.FIRING:
            # a veto's mute "until the rule clears" ends here
            await self.store.unmute(run.service, run.rule.name, until_clear_only=True)
            if run.rule.action == "notify":
                await self.report(
                    "rule_resolved",
                    service=run.service,
                    deployment_id=deployment.id,
                    detail=detail,
                    summary=f"{run.rule.name} resolved",
                )
